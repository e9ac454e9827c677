r"""Tiny config for tests and smoke runs (seconds on CPU).

  python scripts/generate.py --config=configs/tiny.py
"""
from configs import base


def get_config(arg=None):
  del arg
  cfg = base.get_config("size=tiny")
  cfg.generate.update(num_prompts=2, max_new_tokens=8, chunk=8)
  return cfg
