"""The sweep is resumable: killed at random moments and restarted, every run ends present once."""
import json
import os
import random
import subprocess
import sys

import ml_collections
import pytest

from moe_serve import config as config_lib
from moe_serve.experiments import sweep, sweep_tasks

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_grid_order_names_and_overrides():
  points = sweep.grid({"model.router.capacity_factor_decode": [1.0, 2.0],
                       "model.router.capacity_scope": ["batch", "none"]})
  assert points[1] == {"model.router.capacity_factor_decode": 1.0,
                       "model.router.capacity_scope": "none"}
  names = [sweep.run_name(p) for p in points]
  assert len(set(names)) == 4 and names[0].startswith("capacity_factor_decode=1.0,capacity_scope=batch-")
  cfg = ml_collections.ConfigDict({"model": {"router": {"capacity_scope": "none"}}})
  assert sweep.apply_overrides(cfg, {"model.router.capacity_scope": "batch"}).model.router.capacity_scope == "batch"
  assert cfg.model.router.capacity_scope == "none"  # the base config is not modified
  with pytest.raises(config_lib.ConfigError, match="no field 'scope'; did you mean "
                                                   "model.router.capacity_scope"):
    sweep.apply_overrides(cfg, {"model.router.scope": "batch"})
  with pytest.raises(ValueError, match="non-empty list"):
    sweep.grid({"a": []})


def test_killed_sweep_resumes_with_every_result_exactly_once(tmp_path):
  workdir = tmp_path / "sweep"
  rng = random.Random(0)
  env = dict(os.environ, PYTHONPATH=_ROOT)
  cmd = [sys.executable, "-m", "tests.experiments.sweep_worker", str(workdir)]
  kills = 0
  for _ in range(40):  # kill at random points until a restart finishes on its own
    proc = subprocess.Popen(cmd, cwd=_ROOT, env=env)
    try:
      proc.wait(timeout=rng.uniform(0.05, 0.6))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      kills += 1
      continue
    assert proc.returncode == 0
    if (tmp_path / "done.json").exists():
      break
  else:
    subprocess.run(cmd, cwd=_ROOT, env=env, check=True, timeout=120)
  assert kills >= 3, "the test must actually interrupt the sweep"

  names = sorted(os.listdir(workdir))
  expected = sorted(sweep.run_name(p) for p in sweep.grid({"a": [1, 2, 3], "b": [10, 20, 30]}))
  assert names == sorted(expected + [sweep.MANIFEST_FILE])  # no leftover temporary directories
  for name in expected:
    record = json.loads((workdir / name / sweep.RESULT_FILE).read_text())
    assert record["result"]["product"] == record["result"]["a"] * record["result"]["b"]
    for i in range(3):
      assert (workdir / name / f"part{i}.txt").stat().st_size == 8 * 4096
  attempts = (tmp_path / "attempts.log").read_text().split("\n")
  assert not [a for a in attempts if a.startswith("RERUN")]
  assert len(sweep.load_results(workdir)) == 9


def test_results_load_in_axis_order_whatever_the_key_order(tmp_path):
  cfg = ml_collections.ConfigDict({"study": {"load": 0.0}, "model": {"scope": ""}})
  axes = {"study.load": [10.0, 80.0], "model.scope": ["batch", "none"]}  # not sorted
  run = lambda c, d: {"load": c.study.load, "scope": c.model.scope}
  sweep.run_sweep(cfg, axes, str(tmp_path), run, progress=False, log=lambda *_: None)
  got = [r["result"] for r in sweep.load_results(str(tmp_path))]
  assert got == [{"load": 10.0, "scope": "batch"}, {"load": 10.0, "scope": "none"},
                 {"load": 80.0, "scope": "batch"}, {"load": 80.0, "scope": "none"}]


def test_a_resume_removes_temporaries_a_kill_left_mid_write(tmp_path):
  """A kill while files.atomic_open writes the manifest leaves `sweep.json.tmpPID` (the flake
  the kill-and-resume test above met once); the next run removes it."""
  cfg = ml_collections.ConfigDict({"study": {"load": 0.0}})
  (tmp_path / f"{sweep.MANIFEST_FILE}.tmp12345").write_text("{\"axes\": [")
  sweep.run_sweep(cfg, {"study.load": [1.0]}, str(tmp_path), lambda c, d: {},
                  progress=False, log=lambda *_: None)
  assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]


def test_a_joint_axis_sets_its_keys_together_and_reloads_from_the_manifest(tmp_path):
  cfg = ml_collections.ConfigDict({"study": {"load": 0.0, "arm": ""}, "model": {"scope": ""}})
  axes = {("model.scope", "study.arm"): [("batch", "routing"), ("none", "numerical")],
          "study.load": [10.0, 80.0]}
  run = lambda c, d: [c.model.scope, c.study.arm, c.study.load]
  sweep.run_sweep(cfg, axes, str(tmp_path), run, progress=False, log=lambda *_: None)
  got = [r["result"] for r in sweep.load_results(str(tmp_path))]  # points from sweep.json
  assert got == [["batch", "routing", 10.0], ["batch", "routing", 80.0],
                 ["none", "numerical", 10.0], ["none", "numerical", 80.0]]
  with pytest.raises(ValueError, match="every value must be a tuple of 2"):
    sweep.grid({("model.scope", "study.arm"): [("batch",)]})


def test_resuming_with_another_config_is_refused(tmp_path):
  cfg = ml_collections.ConfigDict({"study": {"repeats": 30, "load": 0.0}})
  run = lambda c, d: {"load": c.study.load}
  quiet = dict(progress=False, log=lambda *_: None)
  sweep.run_sweep(cfg, {"study.load": [1.0]}, str(tmp_path), run, **quiet)
  sweep.run_sweep(cfg, {"study.load": [1.0, 2.0]}, str(tmp_path), run, **quiet)  # more points: ok
  other = ml_collections.ConfigDict({"study": {"repeats": 10, "load": 0.0}})
  with pytest.raises(ValueError, match="holds runs of another config"):
    sweep.run_sweep(other, {"study.load": [1.0]}, str(tmp_path), run, **quiet)


def test_task_index_and_count_from_flags_and_scheduler_environments():
  resolve = sweep_tasks.resolve
  assert resolve(environ={}) == (0, 1)
  assert resolve(2, 3, environ={}) == (2, 3)
  assert resolve(environ={"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}) == (5, 8)
  assert resolve(environ={"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
                          "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2"}) == (2, 4)
  assert resolve(environ={"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "2"}) == (1, 2)
  assert resolve(0, 2, environ={"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "2"}) == (0, 2)
  bad = [((3, 3, {}), r"--task_index=3: must be in \[0, 3\)"),
         ((-1, 3, {}), r"--task_index=-1"), ((0, 0, {}), "--num_tasks=0"),
         ((1, None, {}), "go together"),
         ((None, None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}),
          "SLURM_ARRAY_TASK_ID='x' is not a whole number"),
         ((None, None, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "8"}),
          r"--task_index=9: must be in \[0, 8\)"),
         ((None, None, {"JOB_COMPLETION_INDEX": "0"}), "JOB_COMPLETIONS is not")]
  for (index, count, environ), message in bad:
    with pytest.raises(config_lib.ConfigError, match=message):
      resolve(index, count, environ=environ)
  # The rule: setting i runs in task i % N, every setting in exactly one task.
  tasks = [sweep_tasks.assigned(7, sweep_tasks.Task(i, 3)) for i in range(3)]
  assert tasks == [[0, 3, 6], [1, 4], [2, 5]]


def test_tasks_on_one_workdir_each_run_theirs_and_clean_only_their_temporaries(tmp_path):
  cfg = ml_collections.ConfigDict({"study": {"load": 0.0}})
  axes = {"study.load": [1.0, 2.0, 3.0]}
  quiet = dict(progress=False, log=lambda *_: None)
  ran = []
  run = lambda c, d: ran.append(c.study.load) or {"load": c.study.load}
  # Temporaries a killed task 0 and a live task 1 left, and a killed try of task 0's run.
  (tmp_path / f"{sweep.MANIFEST_FILE}.tmptask0").write_text("{")
  (tmp_path / f"{sweep.MANIFEST_FILE}.tmptask1").write_text("{")
  half = tmp_path / sweep.run_name({"study.load": 1.0})
  half.mkdir()
  (half / "completions.jsonl").write_text("half a line")
  done = sweep.run_sweep(cfg, axes, str(tmp_path), run, task=sweep_tasks.Task(0, 2), **quiet)
  assert ran == [1.0, 3.0] and [r["result"]["load"] for r in done] == [1.0, 3.0]
  assert sorted(os.listdir(half)) == [sweep.RESULT_FILE]  # the killed try's file is gone
  assert sweep.missing(str(tmp_path)) == [sweep.run_name({"study.load": 2.0})]
  names = os.listdir(tmp_path)
  assert f"{sweep.MANIFEST_FILE}.tmptask0" not in names
  assert f"{sweep.MANIFEST_FILE}.tmptask1" in names  # task 1's: not task 0's to remove
  sweep.run_sweep(cfg, axes, str(tmp_path), run, task=sweep_tasks.Task(1, 2), **quiet)
  assert ran == [1.0, 3.0, 2.0] and sweep.missing(str(tmp_path)) == []
  assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]
