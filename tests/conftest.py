"""Every test sees 8 fake CPU devices: XLA_FLAGS must be set before jax is imported.

The session also shares one XLA compilation cache (a new temporary directory) between pytest's
processes and the scripts tests start: a program two of them compile alike compiles once. It
does not outlive the session, so every run compiles from scratch, as a fresh clone does.
"""
import os
import shutil
import tempfile

_DEVICES = "--xla_force_host_platform_device_count=8"
if _DEVICES not in os.environ.get("XLA_FLAGS", ""):  # xdist workers inherit it
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICES).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # set by the first process: workers share it
  _OWN_CACHE = tempfile.mkdtemp(prefix="moe_serve_test_xla_cache_")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_OWN_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import jax  # noqa: E402  pylint: disable=wrong-import-position
import pytest  # noqa: E402

from configs import base  # noqa: E402


@pytest.fixture
def tiny_cfg():
  """A fresh tiny config (tests may modify it)."""
  return base.get_config("size=tiny")


@pytest.fixture
def fake_gs(tmp_path, monkeypatch):
  """gs:// served by tests/fake_gcs.py's local-backed store (no network) for this test."""
  import importlib  # pylint: disable=import-outside-toplevel
  from tests import fake_gcs  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv(fake_gcs.ENV, str(tmp_path / "gcs"))
  fake_gcs.register()
  yield tmp_path / "gcs"
  registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry: a dict)
  for name in ("gcs", "gs"):
    registry._registry.pop(name, None)  # pylint: disable=protected-access
  from etils.epath import backend  # pylint: disable=import-outside-toplevel
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def pytest_report_header(config):
  del config
  return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# The longest tests first (durations of a fresh-clone `-n 2` run on a 2-core CPU, 2026-12-05), so
# with `-n 2` no worker is left running one of them after the other has finished everything else
# (and with xdist's worksteal scheduling, below, an idle worker takes the other's queued tests).
# A file named whole moves whole, keeping its module-scoped fixture to one setup per worker.
# Without xdist the order is pytest's.
LONGEST_FIRST = (
    "tests/parallel/test_multiprocess.py::test_two_processes_write_what_one_process_writes",
    "tests/serving/test_engine.py::test_batch_invariant_requests_match_solo_at_any_step_shape",
    "tests/test_loading.py::",
    "tests/model/test_invariant.py::test_the_same_holds_with_other_vector_instructions",
    "tests/model/test_invariant.py::test_a_request_gets_its_solo_bits_at_any_step_shape",
    "tests/test_bundled.py::",
    "tests/experiments/test_protocols.py::test_every_protocol_gives_one_output_per_prompt",
    "tests/training/test_train.py::test_kill_and_resume_is_bitwise",
    "tests/experiments/test_sweep.py::test_killed_sweep_resumes_with_every_result_exactly_once",
)


def pytest_collection_modifyitems(config, items):
  if not os.environ.get("PYTEST_XDIST_WORKER"):
    return
  del config
  rank = lambda item: next((i for i, p in enumerate(LONGEST_FIRST) if item.nodeid.startswith(p)),
                           len(LONGEST_FIRST))
  items.sort(key=rank)  # stable: the rest keep pytest's order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """`-n N` without another --dist: worksteal instead of load, so tests of very different lengths
  still end together (load hands out fixed chunks of the collection in order)."""
  if config.getoption("dist") != "load":
    return None
  from xdist.scheduler import WorkStealingScheduling  # pylint: disable=import-outside-toplevel
  return WorkStealingScheduling(config, log)
