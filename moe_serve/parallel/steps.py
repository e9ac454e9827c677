"""Jitted step functions that serving and training call.

Single-device version: the sharding work (mesh, in/out shardings) builds on these signatures.
The KV cache argument is donated, so a step updates it in place.
"""
import functools

import jax

from moe_serve.model import api


def make_step_fn(model_cfg):
  """jit((params, cache, StepBatch) -> (logits, cache, aux)) with the cache donated."""
  return jax.jit(functools.partial(api.step, model_cfg), donate_argnums=(1,))


def make_forward_fn(model_cfg):
  """jit((params, tokens [B, L]) -> (logits [B, L, V], aux))."""
  return jax.jit(functools.partial(api.forward, model_cfg))
