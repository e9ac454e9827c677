"""Bytes per device: measured from live arrays, and planned for a mesh one does not have yet.

- `measured(params, cache)`: what each device holds, from the arrays' actual shards (this
  process's devices; in a multi-process run every process's devices hold the same amounts for
  the logical axis rules' even shardings). This is the `memory` entry of a serving summary.
- `planned(model_cfg, mesh_shape, rules, num_slots)`: the same figures from the logical axis
  rules and the mesh sizes alone (no devices needed): a shard of a dimension of size n split
  over mesh axes of total size k holds ceil(n / k) entries.
- `largest_fitting(...)`: the deepest model (layers, in whole `moe_every` periods) and the most
  experts (multiples of the `expert` axis) that fit a per-device byte budget, everything else as
  configured: for planning a node before renting it. Bytes are affine in both, so two planned
  sizes give the line.
Only parameters and the KV cache are counted: activations, compiled code and the runtime's own
buffers come on top (leave headroom; on GPU, XLA preallocates 75% of memory by default).
"""
import math

import flax.linen as nn
import jax

from moe_serve.model import api
from moe_serve.model import attend
from moe_serve.parallel import sharding

GIB = 2 ** 30


def _per_device(tree):
  """{device: bytes} of the shards of `tree`'s arrays on this process's devices."""
  out = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      out[shard.device] = out.get(shard.device, 0) + math.prod(shard.data.shape) * x.dtype.itemsize
  return out


def measured(params, cache, **more):
  """Parameter and cache bytes (and of each array tree in `more`, e.g. prefix_pool=...):
  logical totals and per device (max and min over this process's devices), from the arrays'
  shardings."""
  out = {"devices": jax.device_count()}
  for name, tree in (("params", params), ("cache", cache), *more.items()):
    per = _per_device(tree)
    out[f"{name}_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(tree)))
    out[f"{name}_bytes_per_device"] = int(max(per.values()))
    out[f"{name}_bytes_per_device_min"] = int(min(per.values()))
  return out


def _shard_bytes(shape_dtype, spec, mesh_shape):
  """Bytes of the largest shard of one array with PartitionSpec `spec` on mesh sizes."""
  n = 1
  for dim, axes in zip(shape_dtype.shape, tuple(spec) + (None,) * len(shape_dtype.shape)):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    n *= -(-dim // math.prod(mesh_shape[a] for a in axes))
  return n * shape_dtype.dtype.itemsize


def planned(model_cfg, mesh_shape, rules, num_slots):
  """{params_bytes, cache_bytes (logical totals), params_bytes_per_device,
  cache_bytes_per_device} for `model_cfg` on a mesh of sizes `mesh_shape` ({axis: size})."""
  shapes = jax.eval_shape(lambda: api.init_params(model_cfg, jax.random.key(0)))
  specs = nn.logical_to_mesh(api.param_axes(model_cfg), rules)
  cache = jax.eval_shape(lambda: api.init_cache(model_cfg, num_slots))
  kv = {c: nn.logical_to_mesh_axes(axes, rules)
        for c, axes in attend.cache_axes(model_cfg).items()}
  cache_specs = {"layers": [dict(kv) for _ in range(model_cfg.num_layers)],
                 "lengths": nn.logical_to_mesh_axes(sharding.CACHE_LENGTHS_AXES, rules)}
  out = {}
  for name, tree, spec_tree in (("params", shapes, specs), ("cache", cache, cache_specs)):
    leaves = jax.tree.leaves(tree)
    spec_leaves = jax.tree.leaves(spec_tree, is_leaf=lambda s: isinstance(
        s, jax.sharding.PartitionSpec))
    out[f"{name}_bytes"] = int(sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves))
    out[f"{name}_bytes_per_device"] = int(sum(_shard_bytes(x, s, mesh_shape)
                                              for x, s in zip(leaves, spec_leaves)))
  return out


def _total(model_cfg, mesh_shape, rules, num_slots):
  p = planned(model_cfg, mesh_shape, rules, num_slots)
  return p["params_bytes_per_device"] + p["cache_bytes_per_device"]


def _largest(model_cfg, field, step, start, mesh_shape, rules, num_slots, budget):
  """The largest multiple of `step` for `model_cfg[field]` whose per-device bytes fit (bytes are
  affine in it: measured at `start` and `start + step`)."""
  sizes = []
  for n in (start, start + step):
    m = model_cfg.copy_and_resolve_references()
    m[field] = n
    types = tuple(m.get("layer_types", ()))
    if field == "num_layers" and types:  # per-layer attention kinds: the pattern, repeated
      m.layer_types = tuple(types[i % len(types)] for i in range(n))
    sizes.append(_total(m, mesh_shape, rules, num_slots))
  slope = sizes[1] - sizes[0]
  if slope <= 0:
    return None
  return int(max(0, start + (int(budget) - sizes[0]) // slope * step))


def largest_fitting(model_cfg, mesh_shape, rules, num_slots, budget_bytes):
  """What fits `budget_bytes` per device: this config's planned bytes, whether it fits, and the
  largest `num_layers` and `num_experts` (each alone changed) that would."""
  plan = planned(model_cfg, mesh_shape, rules, num_slots)
  used = plan["params_bytes_per_device"] + plan["cache_bytes_per_device"]
  every, ex, k = model_cfg.moe_every, mesh_shape["expert"], model_cfg.router.k
  # Layers are measured past the dense first ones; experts in whole router groups (of at least
  # two experts, and enough of them in the topk_groups groups for k).
  groups = model_cfg.router.get("expert_groups", 1)
  step = math.lcm(ex, groups)
  fewest = max(k, 2 * groups if groups > 1 else 1,
               groups * -(-k // model_cfg.router.get("topk_groups", 1)))
  first = model_cfg.get("first_dense", 0)
  return dict(plan, budget_bytes=int(budget_bytes), fits=used <= budget_bytes,
              largest_num_layers=_largest(model_cfg, "num_layers", every, first + every,
                                          mesh_shape, rules, num_slots, budget_bytes),
              largest_num_experts=_largest(model_cfg, "num_experts", step,
                                           step * -(-fewest // step), mesh_shape, rules,
                                           num_slots, budget_bytes))
