"""Scripts check their whole config before building anything, and bad input is one clear line.

In-process: `cli.bad_override` names the full path of an unknown `--config.x.y` and the nearest
valid names, and a sweep checks every setting of its grid (each section's own checks are in
tests/test_config.py).
End to end: scripts/serve.py given those inputs exits with status 2 and prints `error: ...`, no
traceback, before it loads or compiles anything.
"""
import os
import subprocess
import sys

import pytest

from configs import study_default
from moe_serve import cli
from moe_serve import config as config_lib
from moe_serve.experiments import study

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = "--config=configs/serve_default.py:size=tiny"


def test_unknown_override_names_path_and_nearest():
  argv = ["serve.py", _TINY, "--config.serve.max_num_seq=4", "--workdir=x"]
  message = cli.bad_override(argv)
  assert "unknown config field 'serve.max_num_seq'" in message
  assert "did you mean serve.max_num_seqs" in message
  message = cli.bad_override(["serve.py", _TINY, "--config.workload.arrival.rat=3"])
  assert "workload.arrival has no field 'rat'; did you mean workload.arrival.rate" in message
  message = cli.bad_override(["serve.py", _TINY, "--config.servee.policy=fcfs"])
  assert "the config has no field 'servee'; did you mean serve" in message
  assert cli.bad_override(["serve.py", _TINY, "--config.serve.max_num_seqs=4"]) is None


def test_sweep_checks_every_setting_and_the_mesh():
  cfg = study_default.get_config("size=tiny")
  cfg.sweep.axes = (("model.router.capacity_scope", ("batch", "nonee")),)
  with pytest.raises(config_lib.ConfigError, match=r"sweep setting .*'nonee'.* is not one of"):
    study.validate(cfg)
  cfg = study_default.get_config("size=tiny")
  cfg.mesh.data = 16  # the tests have 8 devices
  with pytest.raises(config_lib.ConfigError, match=r"needs 16 devices but only 8 exist"):
    study.validate(cfg)
  cfg = study_default.get_config("size=tiny")
  cfg.mesh.update(data=2, expert=4)
  cfg.sweep.axes = (("serve.max_num_seqs", (8, 5)),)
  with pytest.raises(config_lib.ConfigError, match=r"sweep setting .*5.*serve.buckets.decode_rows|"
                                                   r"sweep setting .*serve.max_num_seqs=5"):
    study.validate(cfg)


def _serve(*args, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, "scripts/serve.py", _TINY, "--workdir=/nonexistent/x",
                         *args], cwd=_ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, words", [
    (["--config.serve.foo=1"], "unknown config field 'serve.foo': serve has no field 'foo'"),
    (["--config.model.router.k=9"], "model.router.k=9 exceeds model.num_experts=4"),
    (["--config.mesh.data=16"], "mesh {'data': 16, 'expert': 1, 'tensor': 1} needs 16 devices "
                                "but only 1 exist"),
    (["--config.params_dir=/nonexistent/model"],
     "params_dir /nonexistent/model is not a directory"),
])
def test_serve_script_reports_bad_input_in_one_line(args, words):
  proc = _serve(*args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert f"error: {words}" in proc.stderr
  assert "Traceback" not in proc.stderr


_QUIET_SCRIPT = """
import logging
from absl import logging as absl_logging
from moe_serve import cli
def main(argv):
  absl_logging.info("an INFO line, as Orbax writes them")
  logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu': no libtpu")
  absl_logging.warning("a WARNING line")
  progress = cli.Progress()
  for i in range(3):
    progress("compile step shapes", i + 1, 3)
cli.run(main)
"""


@pytest.mark.parametrize("verbosity", [None, 0])
def test_scripts_are_quiet_by_default(verbosity):
  """INFO logs (Orbax) only with --verbosity=0/1; no TPU probe line without libtpu; progress shows."""
  args = [] if verbosity is None else [f"--verbosity={verbosity}"]
  out = subprocess.run([sys.executable, "-c", _QUIET_SCRIPT, *args], cwd=_ROOT,
                       env=dict(os.environ, PYTHONPATH=_ROOT), capture_output=True, text=True,
                       timeout=120, check=True)
  assert "a WARNING line" in out.stderr
  assert ("an INFO line" in out.stderr) == (verbosity is not None)
  assert "Unable to initialize backend" not in out.stderr  # no libtpu in the test install
  assert "compile step shapes: 100%" in out.stderr and "3/3" in out.stderr
