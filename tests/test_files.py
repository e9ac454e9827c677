"""Nothing lost on the way out: outputs appear only complete; a full disk or a kill leaves what was
finished intact; resumed runs repair what an interruption left.

- files.atomic_open: a writer that fails with ENOSPC mid-file leaves the old file and no
  temporary behind (the fake disk raises from write());
- a serving run writes complete files, lists skipped trace lines, and says where its parameters
  came from;
- a sweep reruns a finished-looking run whose result.json is unreadable, and names an unreadable
  manifest and the fix;
- a resumed training run cuts a partial last metrics line (what a kill or a full disk leaves).
"""
import errno
import json
import os

import ml_collections
import pytest

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve import files
from moe_serve.experiments import sweep
from moe_serve.metrics import writers
from moe_serve.serving import run as run_lib


class _FullDisk:
  """Wraps a file: the n-th write raises ENOSPC, as a full disk does."""

  def __init__(self, f, fail_at):
    self._f, self._left = f, fail_at

  def write(self, text):
    self._left -= 1
    if self._left <= 0:
      raise OSError(errno.ENOSPC, "No space left on device")
    return self._f.write(text)

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
  real_open = open

  def failing_open(path, mode="r", *args, **kwargs):
    f = real_open(path, mode, *args, **kwargs)
    return _FullDisk(f, fail_at=3) if "w" in mode and ".tmp" in str(path) else f

  monkeypatch.setattr("builtins.open", failing_open)


def test_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, full_disk):
  del full_disk
  path = tmp_path / "requests.jsonl"
  path.write_text('{"id":0}\n')
  with pytest.raises(OSError, match="No space left"):
    writers.write_jsonl(path, [{"id": i} for i in range(10)])
  assert path.read_text() == '{"id":0}\n'
  assert os.listdir(tmp_path) == ["requests.jsonl"]
  with pytest.raises(OSError, match="No space left"):
    writers.write_jsonl(tmp_path / "new.jsonl", [{"id": i} for i in range(10)])
  assert os.listdir(tmp_path) == ["requests.jsonl"]  # no truncated new.jsonl posing as complete


def test_atomic_open_keeps_old_content_when_the_caller_fails(tmp_path):
  path = tmp_path / "x.json"
  files.write_text_atomic(path, "old")
  with pytest.raises(RuntimeError):
    with files.atomic_open(path) as f:
      f.write("half of the new")
      raise RuntimeError("killed")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]


def test_serving_run_keeps_skipped_lines_and_names_its_parameters(tmp_path):
  trace = tmp_path / "trace.jsonl"
  good = {"arrival": 0.0, "max_new_tokens": 3, "domain": "add", "prompt": "1+2="}
  trace.write_text("\n".join([json.dumps(good), '{"arrival": 0.1, "max_new_tokens": 2.5, '
                              '"domain": "add", "prompt": "x"}', json.dumps(good | {"id": 5})]))
  cfg = serve_default.get_config("size=tiny")
  cfg.workload.update(trace=str(trace), skip_bad_lines=True)
  cfg.serve.plots = False  # tests/serving/test_serve_outputs.py checks the plots
  summary, _ = run_lib.serve(cfg, tmp_path / "run", log=lambda *_: None)
  assert summary["params"] == {"kind": "random_init", "seed": 0}
  assert summary["skipped_trace_lines"] == 1 and summary["completed"] == 2
  skipped = writers.read_jsonl(tmp_path / "run" / "skipped_lines.jsonl")
  assert skipped[0]["line"] == 2 and "max_new_tokens=2.5" in skipped[0]["reason"]
  assert sorted(os.listdir(tmp_path / "run")) == [
      "benchmark.json", "config.json", "requests.jsonl", "skipped_lines.jsonl", "steps.jsonl",
      "summary.csv",
      "summary.json", "wall.jsonl"]


def _sweep(workdir, calls):
  cfg = ml_collections.ConfigDict({"a": 0})

  def run_fn(c, run_dir):
    del run_dir
    calls.append(c.a)
    return {"a": c.a}

  return sweep.run_sweep(cfg, {"a": [1, 2, 3]}, workdir, run_fn, progress=False,
                         log=calls.append)


def test_sweep_reruns_a_run_whose_result_is_unreadable(tmp_path):
  calls = []
  _sweep(tmp_path, calls)
  assert calls == [1, 2, 3]
  broken = os.path.join(tmp_path, sweep.run_name({"a": 2}), sweep.RESULT_FILE)
  with open(broken, "w", encoding="utf-8") as f:
    f.write('{"overrides": {"a": 2}, "res')  # what a disk error or a hand edit leaves
  calls.clear()
  results = _sweep(tmp_path, calls)
  assert calls[-1] == 2 and calls.count(2) == 1 and 1 not in calls and 3 not in calls
  assert any("no readable result.json; running it again" in str(c) for c in calls)
  assert [r["result"]["a"] for r in results] == [1, 2, 3]


def test_sweep_names_an_unreadable_manifest_and_the_fix(tmp_path):
  _sweep(tmp_path, [])
  (tmp_path / sweep.MANIFEST_FILE).write_text("{not json")
  with pytest.raises(config_lib.ConfigError, match=r"sweep manifest .*sweep.json is unreadable "
                                                   r".*delete .*sweep.json and run the same"):
    _sweep(tmp_path, [])


def test_resumed_metrics_cut_a_partial_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
  writer = writers.MetricsLog(tmp_path)
  assert writer.cut_bytes == len('{"step": 3, "lo')
  writer.write({"step": 3})
  assert [r["step"] for r in writer.read()] == [1, 2, 3]
