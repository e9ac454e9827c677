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


def pytest_report_header(config):
  del config
  return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
