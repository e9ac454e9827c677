"""Every test sees 8 fake CPU devices: XLA_FLAGS must be set before jax is imported."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
