"""A tiny real model shared by the serving tests: one jitted step, so each bucket compiles once."""
import jax
import pytest

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.model import api
from moe_serve.parallel import steps


def tiny_serve_cfg(**serve):
  cfg = serve_default.get_config("size=tiny")
  cfg.serve.update(dict(plots=False), **serve)  # plots: tests/serving/test_serve_outputs.py
  config_lib.validate(cfg)
  config_lib.validate_serve(cfg)
  return cfg


@pytest.fixture(scope="session")
def tiny_model():
  """(step_fn, params) for the tiny model section of configs/serve_default.py."""
  m = serve_default.get_config("size=tiny").model
  return steps.make_step_fn(m), api.init_params(m, jax.random.key(0))
