"""A tiny real model shared by the serving tests: one jitted step, so each bucket compiles once."""
import pytest

from configs import serve_default
from moe_serve.parallel import steps


@pytest.fixture(scope="session")
def tiny_model():
  """(step_fn, params) for the tiny model section of configs/serve_default.py."""
  m = serve_default.get_config("size=tiny").model
  return steps.make_step_fn(m), steps.make_init_fn(m)(0)
