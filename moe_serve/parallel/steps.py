"""Jitted init, forward and step functions that serving and training call.

Without a mesh they are plain single-device jits (the original signatures). With `mesh=` and
`rules=` (the config's `logical_axis_rules`) they are `jax.jit`s with explicit `in_shardings` /
`out_shardings`: parameters from their logical names, the KV cache with slots on `data` and KV
heads on `tensor` (donated, so a step updates it in place), step inputs with rows on `data`, and
replicated logits/aux. Activations follow the model's own logical constraints, which bind to the
mesh inside the traced function (mesh.logical_context).
"""
import functools

import jax
import numpy as np

from moe_serve import config as config_lib
from moe_serve.model import api
from moe_serve.parallel import mesh as mesh_lib
from moe_serve.parallel import sharding


class ShardedFn:
  """A sharded jit that places its host inputs first (see sharding.put).

  `static` names keyword arguments passed on positionally after the placed ones (a jit with
  in_shardings takes no keyword arguments; the jit marks those positions static).
  `lower(*args)` gives the lowered computation of the same jit (for HLO inspection).
  """

  def __init__(self, jitted, in_shardings, what, static=()):
    self.jitted, self.in_shardings, self._what = jitted, in_shardings, what
    self._static = static

  def place(self, *args):
    for arg, s, what in zip(args, self.in_shardings, self._what):
      if what is not None:
        sharding.check_divisible(arg, s, *what)
    return sharding.put(args, tuple(self.in_shardings))

  def __call__(self, *args, **static):
    unknown = set(static) - set(self._static)
    if unknown:
      raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
    return self.jitted(*self.place(*args), *(static.get(k) for k in self._static))

  def lower(self, *args):
    return self.jitted.lower(*self.place(*args))


def _require_rules(mesh, rules):
  if rules is None:
    raise config_lib.ConfigError(f"a mesh {dict(mesh.shape)} was given without rules; pass "
                                 "rules=config.logical_axis_rules")
  return tuple(tuple(r) for r in rules)


_ROWS_FIX = ("step input", "pad the batch with idle rows (segment id -1) to a multiple of the "
             "data axis, or use a smaller mesh.data")
_SLOTS_FIX = ("KV cache", "use a number of slots that is a multiple of mesh.data")


def make_step_fn(model_cfg, mesh=None, rules=None, record_routing=False):
  """jit((params, cache, StepBatch, kv_len=None) -> (logits, cache, aux)) with the cache donated.

  `record_routing` is passed to `api.step` as a static argument: aux["routing"] then lists each
  MoE layer's Routing (replicated, like the rest of aux, on a mesh). `kv_len` is static too
  (one compile per value; api.step).
  """
  if mesh is None:
    return jax.jit(functools.partial(api.step, model_cfg, record_routing=record_routing),
                   donate_argnums=(1,), static_argnames=("kv_len",))
  rules = _require_rules(mesh, rules)
  p = sharding.plan(model_cfg, mesh, rules)
  out_s = (sharding.replicated(mesh), p.cache, sharding.replicated(mesh))

  def step(params, cache, batch, kv_len=None):
    with mesh_lib.logical_context(mesh, rules):
      return api.step(model_cfg, params, cache, batch, record_routing=record_routing,
                      kv_len=kv_len)

  jitted = jax.jit(step, in_shardings=(p.params, p.cache, p.batch), out_shardings=out_s,
                   donate_argnums=(1,), static_argnums=(3,))
  return ShardedFn(jitted, (p.params, p.cache, p.batch), (None, _SLOTS_FIX, _ROWS_FIX),
                   static=("kv_len",))


_BUILT = {}


def _once(builder):
  """`builder(model_cfg, mesh, rules)` built once per (model, mesh, rules), as sharding.plan is:
  a second engine or load of one model reuses the compiled function instead of compiling anew."""
  @functools.wraps(builder)
  def once(model_cfg, mesh=None, rules=None):
    key = (builder.__name__, model_cfg.to_json(sort_keys=True), mesh,
           None if rules is None else tuple(tuple(r) for r in rules))
    if key not in _BUILT:
      _BUILT[key] = builder(model_cfg, mesh, rules)
    return _BUILT[key]
  return once


@_once
def make_forward_fn(model_cfg, mesh=None, rules=None):
  """jit((params, tokens [B, L], segment_ids [B, L] = None) -> (logits [B, L, V], aux))."""
  if mesh is None:
    return jax.jit(functools.partial(api.forward, model_cfg))
  rules = _require_rules(mesh, rules)
  params_s = sharding.plan(model_cfg, mesh, rules).params
  rows_s = sharding.named(mesh, rules, sharding.ROWS_AXES)

  def forward(params, tokens_BxL, segment_ids_BxL):
    with mesh_lib.logical_context(mesh, rules):
      return api.forward(model_cfg, params, tokens_BxL, segment_ids_BxL)

  jitted = jax.jit(forward, in_shardings=(params_s, rows_s, rows_s),
                   out_shardings=sharding.replicated(mesh))
  fn = ShardedFn(jitted, (params_s, rows_s, rows_s), (None, _ROWS_FIX, _ROWS_FIX))

  def call(params, tokens_BxL, segment_ids_BxL=None):
    if segment_ids_BxL is None:  # the unsharded default: row b is its own sequence
      b, length = np.shape(tokens_BxL)
      segment_ids_BxL = np.broadcast_to(np.arange(b, dtype=np.int32)[:, None], (b, length))
    return fn(params, tokens_BxL, segment_ids_BxL)

  call.lower = lambda params, tokens, seg: fn.lower(params, tokens, seg)
  return call


# Random init runs once, and LLVM's optimization of it was most of its cost: compiling the tiny
# model's init took 7.0 s at XLA's default level and 1.5 s at level 0 (AMD EPYC, 2026-12-05).
# The level changes how some values round (so does jit vs eager): every init goes through here.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@_once
def make_init_fn(model_cfg, mesh=None, rules=None):
  """seed -> parameters, created directly in their shardings (never whole on one device; one
  device's, committed, without a mesh).

  The values do not depend on the mesh: jax's partitionable threefry gives every shard the bits
  it would have had unsharded (checked in tests/parallel), and every mesh compiles the init with
  the same INIT_COMPILER_OPTIONS.
  """
  rules = None if mesh is None else _require_rules(mesh, rules)

  def init(seed):
    if mesh is None:
      return api.init_params(model_cfg, jax.random.key(seed))
    with mesh_lib.logical_context(mesh, rules):
      return api.init_params(model_cfg, jax.random.key(seed))

  in_sharding = (jax.sharding.SingleDeviceSharding(jax.devices()[0]) if mesh is None
                 else sharding.replicated(mesh))
  jitted = jax.jit(init, in_shardings=in_sharding,
                   out_shardings=sharding.plan(model_cfg, mesh, rules).params,
                   compiler_options=INIT_COMPILER_OPTIONS)
  return lambda seed: jitted(sharding.put(np.uint32(seed), in_sharding))


@_once
def make_cache_fn(model_cfg, mesh=None, rules=None):
  """num_slots -> an empty KV cache, created in its shardings (one device's without a mesh:
  committed like the step's donated output, so a warm-up compiles each bucket once rather than
  once uncommitted and once committed)."""
  rules = None if mesh is None else _require_rules(mesh, rules)
  cache_s = sharding.plan(model_cfg, mesh, rules).cache

  @functools.lru_cache(maxsize=None)
  def jitted(num_slots):
    return jax.jit(lambda: api.init_cache(model_cfg, num_slots), out_shardings=cache_s)

  def init(num_slots):
    if mesh is not None:
      shapes = jax.eval_shape(lambda: api.init_cache(model_cfg, num_slots))
      sharding.check_divisible(shapes, cache_s, *_SLOTS_FIX)
    return jitted(num_slots)()

  return init
