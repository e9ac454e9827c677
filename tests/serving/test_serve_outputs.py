"""What one serving run writes beside its logs: benchmark.json (vLLM names, agreeing with
summary.json), provenance, a jax.profiler trace with --profile_dir, its PNG plots, TensorBoard
with few one-point scalars. One run, shared."""
import glob
import json
import os
import struct

from tensorboardX.proto import event_pb2

import pytest

from moe_serve.serving import run as run_lib
from tests.helpers import serving as serving_helpers
from tests.helpers.serving import tiny_serve_cfg


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
  cfg = tiny_serve_cfg(plots=True, tensorboard=True)
  cfg.workload.update(num_requests=12)
  cfg.workload.arrival.rate = 100.0
  workdir = tmp_path_factory.mktemp("serve")
  engine = serving_helpers.engine(cfg, tiny_model)
  lines = []
  summary, runlog = run_lib.serve(cfg, workdir, engine=engine, log=lines.append,
                                  slo_ttft_ms=100.0, slo_e2el_ms=400.0, percentiles=(50, 99.9),
                                  profile_dir=workdir / "profile", profile_steps=3)
  return workdir, summary, runlog, lines


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def test_benchmark_json_agrees_with_the_summary(served):
  workdir, summary, _, _ = served
  bench = _json(workdir / "benchmark.json")
  assert bench["completed"] == summary["completed"] == 12 and bench["failed"] == 0
  assert bench["request_throughput"] == pytest.approx(summary["request_throughput"])
  assert bench["request_goodput"] == pytest.approx(summary["goodput"])
  assert bench["median_ttft_ms"] == pytest.approx(summary["ttft_ms"]["median"])
  assert bench["p99.9_e2el_ms"] <= bench["p50_e2el_ms"] * 100 and "p99_ttft_ms" not in bench
  assert bench["backend"] == "moe_serve" and bench["model_id"] == "random-init"


def test_summary_carries_provenance(served):
  workdir, _, _, _ = served
  p = _json(workdir / "summary.json")["provenance"]
  assert p["backend"] == "cpu" and p["device_count"] == 8 and len(p["git_commit"]) == 40


def test_profile_dir_holds_a_trace_of_the_first_steps(served):
  workdir, _, runlog, lines = served
  assert len(runlog.steps) > 3
  runs = glob.glob(str(workdir / "profile" / "plugins" / "profile" / "*"))
  assert len(runs) == 1
  names = os.listdir(runs[0])
  assert any(n.endswith(".xplane.pb") for n in names), names
  assert any(n.endswith(".trace.json.gz") for n in names), names
  assert any(line.startswith("profile: 3 steps traced") for line in lines)


def test_plots_are_written(served):
  workdir, _, _, lines = served
  for name in ("latency_cdf.png", "over_time.png"):
    with open(workdir / "plots" / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
  assert any(line.startswith("plots: plots/latency_cdf.png") for line in lines)


def _tb_events(logdir):
  """Every Event in the TFRecord files of `logdir` (length, crc, data, crc framing)."""
  out = []
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[pos + 12:pos + 12 + length])
      out.append(event)
      pos += 12 + length + 4
  return out


def test_tensorboard_has_step_series_a_few_summary_scalars_and_the_table(served):
  workdir, _, runlog, lines = served
  scalars, texts = {}, []
  for event in _tb_events(str(workdir / "tb")):
    for value in event.summary.value:
      if value.HasField("simple_value"):
        scalars[value.tag] = scalars.get(value.tag, 0) + 1
      else:
        texts.append(value.tag)
  assert scalars["step/slots_used"] == len(runlog.steps)
  one_point = [t for t, n in scalars.items() if n == 1]
  assert 5 <= len(one_point) <= 12 and all(t.startswith("summary/") for t in one_point), one_point
  assert any(t.startswith("summary") for t in texts), texts
  assert any(line.startswith("TensorBoard: tensorboard --logdir=") for line in lines)


def test_a_run_on_a_gs_workdir_writes_what_a_local_run_writes(served, tiny_model, fake_gs):
  workdir, _, _, _ = served
  cfg = tiny_serve_cfg(plots=True, tensorboard=True)
  cfg.workload.update(num_requests=12)
  cfg.workload.arrival.rate = 100.0
  engine = serving_helpers.engine(cfg, tiny_model)
  run_lib.serve(cfg, "gs://bucket/serve", engine=engine, log=lambda *_: None,
                slo_ttft_ms=100.0, slo_e2el_ms=400.0, percentiles=(50, 99.9),
                profile_dir="gs://bucket/serve/profile", profile_steps=3)
  remote = fake_gs / "bucket" / "serve"
  for name in ("requests.jsonl", "steps.jsonl"):  # cost_model clock: the same bytes
    assert (remote / name).read_bytes() == (workdir / name).read_bytes(), name
  local_files = {os.path.relpath(p, workdir) for p in glob.glob(f"{workdir}/**/*", recursive=True)
                 if os.path.isfile(p) and "/profile/" not in p and "/tb/" not in p}
  remote_files = {os.path.relpath(p, remote) for p in glob.glob(f"{remote}/**/*", recursive=True)
                  if os.path.isfile(p) and "/profile/" not in p and "/tb/" not in p}
  assert remote_files == local_files and "plots/latency_cdf.png" in remote_files
  assert glob.glob(f"{remote}/tb/events.out.tfevents*")  # uploaded on close
  assert glob.glob(f"{remote}/profile/plugins/profile/*/*.xplane.pb")
  assert not [p for p in glob.glob(f"{fake_gs}/**/*", recursive=True) if ".tmp" in p]
