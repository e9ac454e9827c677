"""Expert-parallel dispatch: tokens reach their experts, and come back, by all-to-all.

Used by `dispatch.run` for the `einsum` and `gather` backends when the experts are split over the
mesh (`dispatch.experts_sharded()`) and the logical name `exp_groups` maps to mesh axes of total
size G > 1 (configs/base.py: `data` x `expert`).

The flat step tokens `[T, D]` (T padded with zero rows to a multiple of G; padding is never kept)
are cut into G dispatch groups of W = T / G consecutive tokens, `[G, W, D]`, the group axis
sharded like the tokens (`exp_groups`: each device holds its own group(s), taken from its data
shard without communication). Each group fills its own slice of the expert buffers locally,
`[G, E, C, D]`, by the backend's method (one-hot einsum or index gather). Re-constraining the
buffers to `[E, G, C, D]` with E on `exp` and G on `exp_buffer_groups` (`data`) moves the mesh
`expert` axis from the group dimension to the expert dimension: GSPMD lowers that to an
all-to-all over `expert`. The experts run on their own rows; the reverse all-to-all returns the
outputs to their groups, which combine them locally. Expert weights never move.

Routing is untouched: the same `Routing` (global semantics, docs/routing.md) is executed, only
re-indexed per group. A pair's buffer row is its rank among the kept pairs of its expert within
its dispatch group. C is a static bound on that count (`group_capacity`), so nothing the router
kept is ever dropped here.

Axis letters (docs/design.md section 2): T flat tokens, D model, F expert FFN hidden, E experts,
K choices per token, C capacity (here: buffer rows per expert and group), G dispatch groups,
W tokens per group, A = W * K (token, choice) pairs of a group, I scope instances, R = E * C
flat buffer rows of a group (+1 zero row).
"""
import jax
import jax.numpy as jnp
import numpy as np

from moe_serve.model import experts, layers, routing

GROUP_TOKEN_AXES = ("exp_groups", None, "activation_embed")  # [G, W, D]
GROUP_PAIR_AXES = ("exp_groups", None, None)  # [G, W, K] routing tensors
GROUP_BUFFER_AXES = ("exp_groups", None, None, "embed_moe")  # [G, E, C, D] before the exchange
EXPERT_BUFFER_AXES = ("exp", "exp_buffer_groups", None, "embed_moe")  # [E, G, C, D] after it


def num_groups():
  """G: the number of shards of the logical `exp_groups` axis in the current trace context (1
  outside a mesh, or when the rules do not name `exp_groups`)."""
  return layers.logical_axis_size("exp_groups")


def group_capacity(num_tokens, groups, flat_capacity, router_cfg=None, num_experts=None,
                   num_decode=0, row_shapes=None):
  """Static buffer rows per (expert, group): the most pairs one expert can keep in one group.

  An expert keeps at most one pair per token and at most its capacity per scope instance
  (`batch`/`group`, or `sequence` with `row_shapes`: routing.instance_capacities), so a group of
  W tokens needs at most `sum over instances i of min(cap_i, |i and group|)` rows (maximised
  over groups). Without `router_cfg` (or for `none`, or `sequence` without `row_shapes`) the
  looser `min(flat_capacity, W)` bound is used.
  """
  per_group = -(-num_tokens // groups)
  if router_cfg is None or not routing.has_static_bound(router_cfg, row_shapes):
    return max(1, min(flat_capacity, per_group))
  inst_T, cap_I, _ = routing.instance_capacities(router_cfg, num_experts, num_tokens, num_decode,
                                                 row_shapes)
  overlap_GxI = np.zeros((groups, len(cap_I)), np.int64)
  np.add.at(overlap_GxI, (np.arange(num_tokens) // per_group, inst_T), 1)
  return max(1, int(np.minimum(overlap_GxI, cap_I[None, :]).sum(1).max()))


def _pad_rows(a, rows):
  pad = [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
  return jnp.pad(a, pad)


def group_slots(index_GxWxK, kept_GxWxK, num_experts):
  """Row of each kept pair in its expert's buffer slice of its group: its rank among the kept
  pairs of that expert in that group, in (token, choice) order. [G, W, K] int32."""
  g, per_group, k = index_GxWxK.shape
  index_GxA = index_GxWxK.reshape(g, per_group * k)
  one_hot_GxAxE = jax.nn.one_hot(index_GxA, num_experts, dtype=jnp.int32)
  one_hot_GxAxE = one_hot_GxAxE * kept_GxWxK.reshape(g, per_group * k, 1)
  rank_GxAxE = jnp.cumsum(one_hot_GxAxE, axis=1) - 1
  slot_GxA = jnp.take_along_axis(rank_GxAxE, index_GxA[..., None], axis=2)[..., 0]
  return slot_GxA.reshape(g, per_group, k)


def _experts(w, x_ExGxCxD):
  """Expert e's FFN (experts.ffn) on its rows of every group: batched einsums, split over `exp`
  by SPMD."""
  return experts.ffn(experts.cast(w, x_ExGxCxD.dtype), x_ExGxCxD,
                     lambda x, m: jnp.einsum("egci,eio->egco", x, m),
                     bias=lambda b_ExF: b_ExF[:, None, None, :])


def _exchange_and_run(w, x_GxExCxD):
  """All-to-all to the experts, the experts, all-to-all back: [G, E, C, D] -> [G, E, C, D]."""
  x_GxExCxD = layers.constrain(x_GxExCxD, GROUP_BUFFER_AXES)
  x_ExGxCxD = layers.constrain(jnp.swapaxes(x_GxExCxD, 0, 1), EXPERT_BUFFER_AXES)
  y_ExGxCxD = layers.constrain(_experts(w, x_ExGxCxD), EXPERT_BUFFER_AXES)
  return layers.constrain(jnp.swapaxes(y_ExGxCxD, 0, 1), GROUP_BUFFER_AXES)


def _einsum_groups(x_GxWxD, index_GxWxK, weight_GxWxK, kept_GxWxK, w, capacity):
  e = w.num_experts
  expert_GxWxKxE = jax.nn.one_hot(index_GxWxK, e, dtype=jnp.float32)
  slot_GxWxKxC = jax.nn.one_hot(
      jnp.where(kept_GxWxK, group_slots(index_GxWxK, kept_GxWxK, e), capacity), capacity,
      dtype=jnp.float32)  # not kept -> all-zero row
  dispatch_GxWxExC = jnp.einsum("gwke,gwkc->gwec", expert_GxWxKxE, slot_GxWxKxC)
  combine_GxWxExC = jnp.einsum("gwke,gwkc,gwk->gwec", expert_GxWxKxE, slot_GxWxKxC, weight_GxWxK)
  x_GxExCxD = jnp.einsum("gwec,gwd->gecd", dispatch_GxWxExC.astype(x_GxWxD.dtype), x_GxWxD)
  y_GxExCxD = _exchange_and_run(w, x_GxExCxD)
  return jnp.einsum("gwec,gecd->gwd", combine_GxWxExC, y_GxExCxD.astype(jnp.float32))


def _gather_one_group(x_WxD, index_WxK, weight_WxK, kept_WxK, slot_WxK, e, capacity):
  """One group's buffer fill by index: [W, D] -> ([E, C, D] inputs, a function of the outputs)."""
  per_group, d = x_WxD.shape
  row_WxK = jnp.where(kept_WxK, index_WxK * capacity + slot_WxK, e * capacity)
  tok_WxK = jnp.broadcast_to(jnp.arange(per_group, dtype=jnp.int32)[:, None], row_WxK.shape)
  src_R = jnp.full((e * capacity,), per_group, jnp.int32).at[row_WxK.reshape(-1)].set(
      tok_WxK.reshape(-1), mode="drop")  # empty rows read the appended zero row
  x_padded = jnp.concatenate([x_WxD, jnp.zeros((1, d), x_WxD.dtype)], axis=0)
  return x_padded[src_R].reshape(e, capacity, d), row_WxK, jnp.where(kept_WxK, weight_WxK, 0.0)


def _combine_one_group(y_ExCxD, row_WxK, weight_WxK):
  e, c, d = y_ExCxD.shape
  y_RxD = jnp.concatenate([y_ExCxD.reshape(e * c, d), jnp.zeros((1, d), y_ExCxD.dtype)])
  return jnp.einsum("wkd,wk->wd", y_RxD[row_WxK].astype(jnp.float32), weight_WxK)


def _gather_groups(x_GxWxD, index_GxWxK, weight_GxWxK, kept_GxWxK, w, capacity):
  e = w.num_experts
  slot_GxWxK = group_slots(index_GxWxK, kept_GxWxK, e)
  fill = jax.vmap(lambda *a: _gather_one_group(*a, e, capacity))
  x_GxExCxD, row_GxWxK, weight_GxWxK = fill(x_GxWxD, index_GxWxK, weight_GxWxK, kept_GxWxK,
                                            slot_GxWxK)
  y_GxExCxD = _exchange_and_run(w, x_GxExCxD)
  return jax.vmap(_combine_one_group)(y_GxExCxD, row_GxWxK, weight_GxWxK)


def grouped_dispatch(backend, x_TxD, rt, w, groups, capacity):
  """Executes `rt` with G = `groups` dispatch groups and `capacity` rows per (expert, group)
  (`group_capacity`); `backend` (einsum | gather) says how each group fills and reads its
  buffers. [T, D] -> [T, D] (float32 sums, cast back to x's dtype)."""
  t, d = x_TxD.shape
  k = rt.expert_index.shape[1]
  per_group = -(-t // groups)
  pad = lambda a: _pad_rows(a, groups * per_group)
  x_GxWxD = layers.constrain(pad(x_TxD).reshape(groups, per_group, d), GROUP_TOKEN_AXES)
  pairs = [layers.constrain(pad(a).reshape(groups, per_group, k), GROUP_PAIR_AXES)
           for a in (rt.expert_index, rt.combine_weight, rt.kept)]  # padding: kept = False
  run = _einsum_groups if backend == "einsum" else _gather_groups
  y_GxWxD = layers.constrain(run(x_GxWxD, *pairs, w, capacity), GROUP_TOKEN_AXES)
  return y_GxWxD.reshape(groups * per_group, d)[:t].astype(x_TxD.dtype)
