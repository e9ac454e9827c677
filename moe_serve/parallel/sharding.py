"""Shardings for everything a step touches: parameters, KV cache, step inputs and outputs.

Parameters carry logical axis names (`api.param_axes`); the cache and the step inputs are named
here. The config's `logical_axis_rules` map all of them to mesh axes, so changing a rule changes
every sharding consistently. Logits and aux leave a step replicated: every process samples the
same tokens from the full logits (the serving loop runs identically on every host).
"""
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from moe_serve import config as config_lib
from moe_serve.model import api
from moe_serve.model import attend
from moe_serve.model.parts import Part, StepBatch

# Logical names of the slot KV cache's lengths (its keys and values: attend.cache_axes) and of
# step input rows (parts.py).
CACHE_LENGTHS_AXES = ("decode_batch",)  # [S]
ROWS_AXES = ("activation_batch", "activation_length")  # [B, L] tokens, positions, segment ids
SLOTS_AXES = ("activation_batch",)  # [B]


def named(mesh, rules, logical_axes):
  """NamedSharding for one tensor's logical axis names under `rules`."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(logical_axes, rules))


def replicated(mesh):
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(tree, shardings, what, fix):
  """Raises ConfigError if a sharded dimension is not a multiple of its mesh axes' size.

  jit would refuse such an input too, but without naming the tensor or the fix.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  for (path, x), s in zip(flat, jax.tree.leaves(shardings)):
    for dim, axes in enumerate(s.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      size = math.prod(s.mesh.shape[a] for a in axes)
      if np.shape(x)[dim] % size:
        raise config_lib.ConfigError(
            f"{what} {jax.tree_util.keystr(path)} has shape {tuple(np.shape(x))}: dim {dim} = "
            f"{np.shape(x)[dim]} is not divisible by mesh axes {axes} of size {size}; {fix}")


class Plan(NamedTuple):
  """Where everything a model's steps touch lives, planned once per (model, mesh, rules).

  `param_shapes` are the parameters' ShapeDtypeStructs; `params` and `cache` their shardings
  (NamedShardings from the logical axis rules on a mesh, one device's SingleDeviceSharding
  without one); `batch` the StepBatch shardings (None without a mesh: plain jit inputs).
  """
  mesh: Any
  rules: Any
  param_shapes: Any
  params: Any
  cache: Any
  batch: Any

  @property
  def abstract_params(self):
    """ShapeDtypeStructs of the parameters carrying their shardings (restore targets)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        self.param_shapes, self.params)


_PLANS = {}


def plan(model_cfg, mesh=None, rules=None):
  """The Plan for `model_cfg` on `mesh` under `rules` (one device if `mesh` is None), traced once
  and shared by the init, restore, cache and step builders."""
  rules = None if rules is None else tuple(tuple(r) for r in rules)
  key = (model_cfg.to_json(sort_keys=True), mesh, rules)
  if key not in _PLANS:
    _PLANS[key] = _make_plan(model_cfg, mesh, rules)
  return _PLANS[key]


def _make_plan(model_cfg, mesh, rules):
  param_shapes = jax.eval_shape(lambda: api.init_params(model_cfg, jax.random.key(0)))
  if mesh is None:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    cache = {"layers": [{c: one for c in attend.cache_axes(model_cfg)}
                        for _ in range(model_cfg.num_layers)],
             "lengths": one}
    return Plan(None, None, param_shapes, jax.tree.map(lambda _: one, param_shapes), cache, None)
  params = nn.logical_to_mesh_sharding(api.param_axes(model_cfg), mesh, rules)
  check_divisible(param_shapes, params, "parameter",
                  "change the model size or the mesh/logical_axis_rules")
  kv = {c: named(mesh, rules, axes) for c, axes in attend.cache_axes(model_cfg).items()}
  cache = {"layers": [dict(kv) for _ in range(model_cfg.num_layers)],
           "lengths": named(mesh, rules, CACHE_LENGTHS_AXES)}
  return Plan(mesh, rules, param_shapes, params, cache, step_batch_shardings(mesh, rules))


def param_shardings(model_cfg, mesh, rules):
  """NamedShardings of the parameters (pytree matching `api.init_params`)."""
  return plan(model_cfg, mesh, rules).params


def abstract_params(model_cfg, mesh, rules):
  """ShapeDtypeStructs of the parameters carrying their shardings (restore targets)."""
  return plan(model_cfg, mesh, rules).abstract_params


def cache_shardings(model_cfg, mesh, rules):
  """Shardings of `api.init_cache`: slots on `decode_batch`, KV heads on `cache_heads`; the
  latent cache of model.attention="mla" has one head, so it is whole on every `cache_heads`
  shard (attend.LATENT_CACHE_AXES) and only its slots are split."""
  return plan(model_cfg, mesh, rules).cache


def part_shardings(mesh, rules, with_slots=True):
  rows = named(mesh, rules, ROWS_AXES)
  return Part(rows, rows, rows, named(mesh, rules, SLOTS_AXES) if with_slots else None)


def step_batch_shardings(mesh, rules):
  """Shardings of a StepBatch: decode and prefill rows on `activation_batch`."""
  return StepBatch(part_shardings(mesh, rules), part_shardings(mesh, rules))


def put(tree, shardings):
  """Places host data (or arrays) as global arrays with `shardings`.

  Every process passes the same full host values; each keeps only its devices' shards, which is
  how inputs enter a multi-process jit. Arrays already carrying the sharding pass through
  untouched (so a donated cache stays the same buffer); ShapeDtypeStructs (for lowering) get
  the sharding attached.
  """
  def one(x, s):
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    if isinstance(x, jax.Array):
      if x.sharding == s:
        return x
      if not x.is_fully_addressable:
        return jax.device_put(x, s)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda index: host[index])
  return jax.tree.map(one, tree, shardings)
