"""scripts/compare.py's library: two serve runs or two sweeps side by side, refused on a
different model or devices unless forced; and the sweep report's TensorBoard hparams."""
import json
import os
import shutil

import pytest

from moe_serve import config as config_lib
from moe_serve.experiments import compare, report, sweep

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_sweep")
PROV = {"backend": "cpu", "device_kind": "cpu", "device_count": 8, "process_count": 1}


def _serve_run(path, throughput, device_count=8, num_experts=4):
  path.mkdir()
  summary = {"output_throughput": throughput, "ttft_ms": {"median": 10.0, "p99": 30.0},
             "completed": 5, "params": {"kind": "random_init", "seed": 0},
             "provenance": dict(PROV, device_count=device_count)}
  (path / "summary.json").write_text(json.dumps(summary))
  (path / "config.json").write_text(json.dumps({"model": {"num_experts": num_experts}}))
  return str(path)


def test_serve_runs_side_by_side_with_ratios_and_refusals(tmp_path):
  a = _serve_run(tmp_path / "a", 100.0)
  b = _serve_run(tmp_path / "b", 150.0)
  text = compare.compare(a, b)
  assert "| serve | output_throughput | 100 | 150 | 1.5 |" in text
  assert "| serve | ttft_ms/median | 10 | 10 | 1 |" in text
  other_device = _serve_run(tmp_path / "c", 150.0, device_count=1)
  with pytest.raises(config_lib.ConfigError, match=r"device: cpu/cpu x 8 .* vs cpu/cpu x 1"):
    compare.compare(a, other_device)
  assert "differs (--force): device" in compare.compare(a, other_device, force=True)
  other_model = _serve_run(tmp_path / "d", 150.0, num_experts=8)
  with pytest.raises(config_lib.ConfigError, match="model: "):
    compare.compare(a, other_model)
  with pytest.raises(config_lib.ConfigError, match="neither a serve run"):
    compare.compare(a, str(tmp_path))


def test_sweeps_side_by_side_per_setting_and_hparams_per_setting(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  shutil.copytree(FIXTURE, a)
  shutil.copytree(FIXTURE, b)
  name = sweep.load_results(str(a))[0]["name"]
  record = json.loads((b / name / sweep.RESULT_FILE).read_text())
  before = record["result"]["serving"]["output_throughput"]
  record["result"]["serving"]["output_throughput"] = 2 * before
  (b / name / sweep.RESULT_FILE).write_text(json.dumps(record))
  text = compare.compare(str(a), str(b))
  assert f"| {name} | output_throughput | {before:.4g} | {2 * before:.4g} | 2 |" in text
  assert f"| {name} | agree_with_solo |" in text  # determinism columns too
  with pytest.raises(config_lib.ConfigError, match="kind: sweep vs serve"):
    compare.compare(str(a), _serve_run(tmp_path / "s", 1.0), force=True)

  report.build(str(a), plots=False, log=lambda *_: None)
  for rec in sweep.load_results(str(a)):  # one hparams session per setting, with its metrics
    events = (a / "tb" / rec["name"]).glob("events.out.tfevents*")
    (data,) = [p.read_bytes() for p in events]
    assert b"hparams" in data and b"scope" in data  # the setting field the sweep varies
    assert b"agree_with_solo" in data and b"output_throughput" in data
