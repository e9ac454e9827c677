"""The tiny serving config the serving, HF and trace tests start from, and an engine on it."""
from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.parallel import steps
from moe_serve.serving.clock import running as clock_lib
from moe_serve.serving.loop.engine import Engine


def tiny_serve_cfg(**serve):
  """configs/serve_default.py's tiny size, validated, with `serve` overrides (no plots)."""
  cfg = serve_default.get_config("size=tiny")
  cfg.serve.update(dict(plots=False), **serve)  # plots: tests/serving/test_serve_outputs.py
  config_lib.validate(cfg)
  config_lib.validate_serve(cfg)
  return cfg


def engine(cfg, model, clock_cls=clock_lib.Clock, num_slots=None):
  """An Engine serving `model` = (step_fn, params) under `cfg`, its cache committed as the step's
  donated output is (steps.make_cache_fn), so each step shape compiles once."""
  step_fn, params = model
  cache = steps.make_cache_fn(cfg.model)(num_slots or cfg.serve.max_num_seqs)
  return Engine(cfg, step_fn, params, cache, clock_cls(cfg.clock))
