"""docs/multihost.md's "A sweep on a cluster", run as written on 2-3 local processes: the tiny
study (a 3-setting grid) split over tasks, one task killed mid-run and run again, outputs on a
local workdir and on a fake `gs://` store (tests/fake_gcs.py). Each split's report equals the
one-process run's in every deterministic column (all but the wall-clock ones).

Cheap: one compilation cache shared by every process (the first run fills it), a tiny grid.
"""
import csv
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

from moe_serve.experiments import report, sweep
from tests import fake_gcs

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DOC = os.path.join(_ROOT, "docs", "multihost.md")
_STUDY = "--config=configs/study_default.py"
_FLAGS = ["--config.study.repeats=2", "--config.study.quality_per_domain=1",
          "--config.workload.num_requests=8", "--config.study.target_domains=('add','sort')",
          "--config.sweep.axes=(('model.router.capacity_scope',('batch','none','sequence')),)"]
_GRID = sweep.grid({"model.router.capacity_scope": ["batch", "none", "sequence"]})
_TIMEOUT_S = 240


def _blocks():
  """The fenced blocks of the doc's cluster section: [(language, text)]."""
  text = open(_DOC, encoding="utf-8").read()
  section = text.split("## A sweep on a cluster", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def _tiny(command, env):
  """The doc's command on the tiny study (the default study takes minutes a setting); the
  overrides in a flag file, as the doc's commands sit inside quotes of their own."""
  assert _STUDY in command
  return command.replace(_STUDY, f"{_STUDY}:size=tiny --flagfile={env['TINY_FLAGS']}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  base = tmp_path_factory.mktemp("cluster")
  (base / "tiny.flags").write_text("\n".join(_FLAGS) + "\n")
  return dict(os.environ, TINY_FLAGS=str(base / "tiny.flags"), PYTHONPATH=f"{_ROOT}:{_ROOT}/tests/fake_gcs_site",
              PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
              FAKE_GCS_ROOT=str(base / "gcs"), JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=str(base / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="module")
def one_process(env, tmp_path_factory):
  """The one-process run's report rows (and it fills the compilation cache)."""
  workdir = tmp_path_factory.mktemp("one") / "study"
  subprocess.run([sys.executable, "scripts/sweep.py", _STUDY + ":size=tiny", *_FLAGS,
                  f"--workdir={workdir}"], cwd=_ROOT, env=env, check=True, timeout=_TIMEOUT_S,
                 capture_output=True)
  return _rows(workdir / "results.csv")


def _rows(path):
  """results.csv without its wall-clock columns."""
  with open(path, encoding="utf-8") as f:
    return [{k: v for k, v in r.items() if "wall" not in k} for r in csv.DictReader(f)]


def _check_complete(workdir, one_process):
  """Every setting once, finished, no temporary left; the report equals the one-process one."""
  names = sorted(os.listdir(workdir))
  runs = sorted(sweep.run_name(p) for p in _GRID)
  assert [n for n in names if n.startswith("capacity_scope")] == runs
  for dirpath, dirnames, filenames in os.walk(workdir):
    assert not [n for n in dirnames + filenames if ".tmp" in n or ".uploads" in n], dirpath
  assert all((workdir / r / sweep.RESULT_FILE).exists() for r in runs)
  assert "Missing settings" not in (workdir / "results.md").read_text()
  assert _rows(workdir / "results.csv") == one_process


def _start(command, env, **extra):
  return subprocess.Popen(["bash", "-c", command], cwd=_ROOT, env=dict(env, **extra),
                          start_new_session=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(procs):
  outs = [p.communicate(timeout=_TIMEOUT_S)[0] for p in procs]
  assert [p.returncode for p in procs] == [0] * len(procs), "\n----\n".join(outs)
  return outs


def test_slurm_array_3_tasks_one_killed_mid_run_and_rerun(env, one_process, tmp_path):
  (script,) = [b for lang, b in _blocks() if "#SBATCH --array=0-7" in b]
  assert script.startswith("#!/bin/bash")
  workdir = tmp_path / "study"  # a local (shared-filesystem) workdir; gs:// in the tests below
  script = _tiny(script, env).replace("gs://my-bucket/study", str(workdir))
  (tmp_path / "study.sbatch").write_text(script)
  task = lambda i: _start(f"bash {tmp_path / 'study.sbatch'}", env, SLURM_ARRAY_TASK_ID=str(i),
                          SLURM_ARRAY_TASK_COUNT="3")
  procs = [task(i) for i in range(3)]
  killed = workdir / sweep.run_name(_GRID[1])  # task 1's one setting
  deadline = time.time() + _TIMEOUT_S
  while not (killed / "config.json").exists() and time.time() < deadline:
    time.sleep(0.01)
  os.killpg(procs[1].pid, signal.SIGKILL)  # mid-run: the setting's files half written
  procs[1].wait()
  assert not (killed / sweep.RESULT_FILE).exists(), "the kill must come before the result"
  _wait([procs[0], procs[2]])
  # What exists now merges into a report that names the missing setting.
  text = report.build(str(workdir), str(tmp_path / "partial"), plots=False, log=lambda *_: None)
  assert "Missing settings: 1 of 3" in text and killed.name in text
  assert len(_rows(tmp_path / "partial" / "results.csv")) == 2
  assert not (workdir / "results.md").exists(), "no task finished last with every setting"

  (out,) = _wait([task(1)])  # run again: the last to finish writes the report
  assert "has no readable result.json; running it again" in out
  _check_complete(workdir, one_process)


def test_kubernetes_indexed_job_and_tpu_vm_commands_as_2_tasks_on_fake_gs(env, one_process,
                                                                          tmp_path):
  """The Job's index 0 and the TPU VM loop's task 1 at once on one gs:// workdir (2 processes,
  not 2 each: the suite's time), then the report command."""
  (spec,) = [yaml.safe_load(b) for lang, b in _blocks() if lang == "yaml"]
  job = spec["spec"]
  assert job["completionMode"] == "Indexed" and job["completions"] == 8
  (container,) = job["template"]["spec"]["containers"]
  assert {e["name"]: e["value"] for e in container["env"]} == {"JOB_COMPLETIONS": "8"}
  k8s = _tiny(shlex.join(container["command"]), env)

  loop, report_cmd = [b for lang, b in _blocks() if "gcloud" in b or "report.py" in b]
  assert "seq 0 7" in loop and "--num_tasks=8" in loop
  loop = _tiny(loop, env).replace("seq 0 7", "seq 1 1").replace("--num_tasks=8", "--num_tasks=2")
  # A `gcloud` that runs --command here, in a home holding the repository as ~/moe_serve.
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  home.mkdir(), bin_dir.mkdir()
  os.symlink(_ROOT, home / "moe_serve")
  (bin_dir / "gcloud").write_text('#!/bin/bash\nfor a in "$@"; do case "$a" in --command=*) '
                                  'cd "$HOME" && exec bash -c "${a#--command=}";; esac; done\n'
                                  'exit 3\n')
  (bin_dir / "gcloud").chmod(0o755)
  outs = _wait([_start(k8s, env, JOB_COMPLETION_INDEX="0", JOB_COMPLETIONS="2"),
                _start(loop, env, HOME=str(home), PATH=f"{bin_dir}:{env['PATH']}")])
  assert "(task 0 of 2: 2 of them)" in outs[0], outs[0]
  assert "(task 1 of 2: 1 of them)" in outs[1], outs[1]  # it ran (`wait` hides a failure)
  workdir = _bucket(env) / "study"
  _check_complete(workdir, one_process)
  os.remove(workdir / "results.md")
  (out,) = _wait([_start(report_cmd, env)])
  assert "## Determinism, serving and quality per setting" in out
  _check_complete(workdir, one_process)


def _bucket(env):
  return pathlib.Path(env[fake_gcs.ENV]) / "my-bucket"
