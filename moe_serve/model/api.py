"""Pure functions over the Decoder: init, full forward, KV cache and the engine step.

`params` are plain (unboxed) arrays; `param_axes` gives their logical axis names for sharding.
The cache is `{"layers": [{"k": [S, M, H, J], "v": [S, M, J, H]}] * num_layers, "lengths": [S]}`
(attend.CACHE_AXES); with model.attention="mla" each layer is the latent `{"k": [S, 1, Hc+Hr, J]}`
(attend.LATENT_CACHE_AXES: the latent Hc and the rotary key Hr per position, nothing per head).

Axis letters (docs/design.md section 2): S cache slots, J key positions (= max_len), M KV heads,
H head dim, Hc latent width and Hr rotary key width (MLA), B rows of a part (a step's decode
rows), P a step's prefill rows, L tokens per row of a part (1 for decode rows, the chunk length
for prefill rows), V vocabulary, E experts.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_serve.model import attend, layers
from moe_serve.model.parts import Part, StepBatch, full_part
from moe_serve.model.transformer import Decoder, is_moe_layer


def _example_parts():
  return [full_part(jnp.zeros((1, 4), jnp.int32))]


def init_params(model_cfg, rng):
  """Random parameters (plain arrays), stored in `model.param_dtype`."""
  variables = Decoder(model_cfg).init(rng, _example_parts())
  params = nn.meta.unbox(variables["params"])
  if model_cfg.param_dtype == "float32":  # created in float32: nothing to cast
    return params
  dt = layers.dtype_of(model_cfg.param_dtype)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: x if path[-1].key in FLOAT32_PARAMS else x.astype(dt), params)


# Parameters kept in float32 whatever model.param_dtype: DeepSeek-V3's selection bias decides
# which experts a token takes by differences far below bf16's resolution (its checkpoints ship
# it in float32 beside bf16 weights, and transformers keeps it so).
FLOAT32_PARAMS = ("e_score_bias",)


def param_axes(model_cfg):
  """The logical axis names of every parameter, as a pytree of PartitionSpecs (no compute)."""
  boxed = jax.eval_shape(lambda: Decoder(model_cfg).init(jax.random.key(0),
                                                         _example_parts()))
  return nn.get_partition_spec(boxed["params"])


def count_params(model_cfg, params):
  """(total, active per token): active counts k of the E routed experts of each MoE layer (for
  expert_choice, k on average); Soft MoE mixes every token into every expert, so all are active."""
  total = sum(x.size for x in jax.tree.leaves(params))
  if model_cfg.router.kind == "soft":
    return total, total
  e, k = model_cfg.num_experts, model_cfg.router.k
  inactive = 0
  for i in range(model_cfg.num_layers):
    if is_moe_layer(model_cfg, i):
      experts = params[f"block_{i}"]["moe"]["experts"]
      inactive += sum(x.size for x in jax.tree.leaves(experts)) * (e - k) // e
  return total, total - inactive


def _per_moe_layer(state, collection, name):
  """The values sown as `name` in `collection`, one per MoE layer, in layer order."""
  blocks = state.get(collection, {})
  order = sorted(blocks, key=lambda b: int(b.rsplit("_", 1)[-1]))  # block_10 after block_9
  return [blocks[b]["moe"][name][0] for b in order if name in blocks[b].get("moe", {})]


def collect_aux(state):
  """Sums the router losses of all MoE layers; stacks expert loads [num_moe_layers, E] and drop
  rates [num_moe_layers]; with recorded routing, `routing` is a list of Routing per MoE layer.
  Without the "aux" collection (a serving step) the losses are 0 and the loads empty. A serving
  step's `kept_pairs` [num_moe_layers, E] int32 counts each expert's kept pairs (absent outside a
  serving step, and for Soft MoE)."""
  zero = jnp.zeros((), jnp.float32)
  loads = _per_moe_layer(state, "aux", "expert_load")
  drops = (_per_moe_layer(state, "aux", "drop_rate") or
           _per_moe_layer(state, "routing", "drop_rate"))
  aux = {
      "lb_loss": sum(_per_moe_layer(state, "aux", "lb_loss"), zero),
      "z_loss": sum(_per_moe_layer(state, "aux", "z_loss"), zero),
      "expert_load": jnp.stack(loads) if loads else jnp.zeros((0, 0), jnp.float32),
      "drop_rate": jnp.stack(drops) if drops else jnp.zeros((0,), jnp.float32),
  }
  pairs = _per_moe_layer(state, "pairs", "kept_pairs")
  if pairs:
    aux["kept_pairs"] = jnp.stack(pairs)
  if "routing" in state:
    aux["routing"] = _per_moe_layer(state, "routing", "routing")
  return aux


def forward(model_cfg, params, tokens_BxL, segment_ids_BxL=None, record_routing=False,
            jitter_rng=None):
  """Full causal forward pass without a cache: (logits [B, L, V] float32, aux).

  `record_routing` (static) adds aux["routing"]; `jitter_rng` (training only) enables the
  router jitter when model.router.jitter > 0.
  """
  (logits,), _, state = _apply(model_cfg, params, [full_part(tokens_BxL, segment_ids_BxL)], None,
                               record_routing=record_routing, jitter_rng=jitter_rng)
  return logits, collect_aux(state)


def _apply(model_cfg, params, parts, cache, num_decode_parts=0, record_routing=False,
           jitter_rng=None, rows_are_requests=False, aux=True, kv_len=None,
           forced_TxYxK=None):
  """`aux`: compute the "aux" collection (router losses, loads; training and forward); without
  it (a serving step), the "pairs" collection (kept pairs per expert) instead."""
  mutable = ["aux"] * aux + ["pairs"] * (not aux) + ["routing"] * record_routing
  rngs = {"jitter": jitter_rng} if jitter_rng is not None else None
  out = Decoder(model_cfg).apply(
      {"params": params}, parts, cache, num_decode_parts, record_routing, rows_are_requests,
      kv_len, forced_TxYxK, mutable=mutable or False, rngs=rngs)
  (logits, cache), state = out if mutable else (out, {})
  return logits, cache, state


def init_cache(model_cfg, num_slots):
  """An empty KV cache of `num_slots` slots in the model's dtype (layout in the module doc).

  Uncommitted arrays: for a jitted step use steps.make_cache_fn, whose cache is committed like
  the step's donated output, so the second step does not compile the same shape again."""
  m = model_cfg
  shapes = attend.cache_layer_shapes(m, num_slots)
  layer = lambda: {c: jnp.zeros(shape, jnp.dtype(m.dtype)) for c, shape in shapes.items()}
  return {"layers": [layer() for _ in range(m.num_layers)],
          "lengths": jnp.zeros((num_slots,), jnp.int32)}


def reset_slot(cache, slot):
  """Zeros one slot's keys, values and length (not needed for correctness: see attention.py)."""
  zero_row = lambda a: a.at[slot].set(0)
  return jax.tree.map(zero_row, cache)


def _new_lengths(lengths_S, part: Part):
  valid_BxL = part.segment_ids_BxL >= 0
  end_B = jnp.max(jnp.where(valid_BxL, part.positions_BxL + 1, 0), axis=1)
  slots_B = jnp.where(end_B > 0, part.slots_B, lengths_S.shape[0])  # rows with no token: dropped
  return lengths_S.at[slots_B].set(end_B, mode="drop")


def step(model_cfg, params, cache, batch: StepBatch, record_routing=False, kv_len=None):
  """One engine step: decode rows [B, 1] and prefill chunks [P, L] against the slot cache.

  Returns (logits {"decode": [B, V], "prefill": [P, L, V]}, new cache, aux). Either part may
  have zero rows. Jit it with the cache donated (parallel/steps.py). A step computes no router
  losses or loads (training-only), only aux["kept_pairs"] [num_moe_layers, E] (what the step's MoE
  work follows, serving/clock/step_cost.py); with `record_routing` (static), aux["drop_rate"] holds
  each
  MoE layer's drop rate and aux["routing"] lists each MoE layer's Routing over the flat tokens `[B
  decode tokens, then P*L prefill tokens]`. Every row must hold at most one request and a request
  at most one row (parts.check_one_request_per_row; the engine's batches do): the MoE sizes
  `sequence`-scope expert buffers by it. `kv_len` (static, default max_len): attention reads only
  the first kv_len cache positions, which must cover every row's last position.
  `batch.forced_TxYxK`, when given, forces a recorded routing on chosen tokens (routing replay,
  model/routing.py; unsharded steps only).
  """
  parts = [batch.decode, batch.prefill]
  (dec_BxLxV, pre_PxLxV), cache, state = _apply(model_cfg, params, parts, cache,
                                                num_decode_parts=1,
                                                record_routing=record_routing,
                                                rows_are_requests=True, aux=False,
                                                kv_len=kv_len,
                                                forced_TxYxK=batch.forced_TxYxK)
  lengths = cache["lengths"]
  for part in parts:
    lengths = _new_lengths(lengths, part)
  cache = dict(cache, lengths=lengths)
  return {"decode": dec_BxLxV[:, 0], "prefill": pre_PxLxV}, cache, collect_aux(state)
