"""Expert-parallel dispatch: tokens reach their experts, and come back, by all-to-all.

Used by `dispatch.run` for the `einsum` and `gather` backends when the experts are split over the
mesh (`dispatch.experts_sharded()`) and the logical name `exp_groups` maps to mesh axes of total
size G > 1 (configs/base.py: `data` x `expert`).

The flat step tokens `[T, D]` (T padded with zero rows to a multiple of G; padding is never kept)
are cut into G dispatch groups of S = T / G consecutive tokens, `[G, S, D]`, the group axis
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

Axis letters as in layers.py, plus G dispatch groups and S tokens per group.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moe_serve.model import layers, routing

GROUP_TOKEN_AXES = ("exp_groups", None, "activation_embed")  # [G, S, D]
GROUP_PAIR_AXES = ("exp_groups", None, None)  # [G, S, K] routing tensors
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
  S tokens needs at most `sum over instances i of min(cap_i, |i and group|)` rows (maximised
  over groups). Without `router_cfg` (or for `none`, or `sequence` without `row_shapes`) the
  looser `min(flat_capacity, S)` bound is used.
  """
  s = -(-num_tokens // groups)
  if router_cfg is None or not routing.has_static_bound(router_cfg, row_shapes):
    return max(1, min(flat_capacity, s))
  inst_T, cap_I, _ = routing.instance_capacities(router_cfg, num_experts, num_tokens, num_decode,
                                                 row_shapes)
  overlap_GxI = np.zeros((groups, len(cap_I)), np.int64)
  np.add.at(overlap_GxI, (np.arange(num_tokens) // s, inst_T), 1)
  return max(1, int(np.minimum(overlap_GxI, cap_I[None, :]).sum(1).max()))


def _pad_rows(a, rows):
  pad = [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
  return jnp.pad(a, pad)


def group_slots(index_GxSxK, kept_GxSxK, num_experts):
  """Row of each kept pair in its expert's buffer slice of its group: its rank among the kept
  pairs of that expert in that group, in (token, choice) order. [G, S, K] int32."""
  g, s, k = index_GxSxK.shape
  index_GxN = index_GxSxK.reshape(g, s * k)
  one_hot_GxNxE = jax.nn.one_hot(index_GxN, num_experts, dtype=jnp.int32)
  one_hot_GxNxE = one_hot_GxNxE * kept_GxSxK.reshape(g, s * k, 1)
  rank_GxNxE = jnp.cumsum(one_hot_GxNxE, axis=1) - 1
  slot_GxN = jnp.take_along_axis(rank_GxNxE, index_GxN[..., None], axis=2)[..., 0]
  return slot_GxN.reshape(g, s, k)


def _experts(w, x_ExGxCxD):
  """Expert e's SwiGLU on its rows of every group: batched einsums, split over `exp` by SPMD."""
  dt = x_ExGxCxD.dtype
  gate_ExGxCxF = jnp.einsum("egcd,edf->egcf", x_ExGxCxD, w.w_gate_ExDxF.astype(dt))
  up_ExGxCxF = jnp.einsum("egcd,edf->egcf", x_ExGxCxD, w.w_up_ExDxF.astype(dt))
  return jnp.einsum("egcf,efd->egcd", nn.silu(gate_ExGxCxF) * up_ExGxCxF,
                    w.w_down_ExFxD.astype(dt))


def _exchange_and_run(w, x_GxExCxD):
  """All-to-all to the experts, the experts, all-to-all back: [G, E, C, D] -> [G, E, C, D]."""
  x_GxExCxD = layers.constrain(x_GxExCxD, GROUP_BUFFER_AXES)
  x_ExGxCxD = layers.constrain(jnp.swapaxes(x_GxExCxD, 0, 1), EXPERT_BUFFER_AXES)
  y_ExGxCxD = layers.constrain(_experts(w, x_ExGxCxD), EXPERT_BUFFER_AXES)
  return layers.constrain(jnp.swapaxes(y_ExGxCxD, 0, 1), GROUP_BUFFER_AXES)


def _einsum_groups(x_GxSxD, index_GxSxK, weight_GxSxK, kept_GxSxK, w, capacity):
  e = w.w_gate_ExDxF.shape[0]
  expert_GxSxKxE = jax.nn.one_hot(index_GxSxK, e, dtype=jnp.float32)
  slot_GxSxKxC = jax.nn.one_hot(
      jnp.where(kept_GxSxK, group_slots(index_GxSxK, kept_GxSxK, e), capacity), capacity,
      dtype=jnp.float32)  # not kept -> all-zero row
  dispatch_GxSxExC = jnp.einsum("gske,gskc->gsec", expert_GxSxKxE, slot_GxSxKxC)
  combine_GxSxExC = jnp.einsum("gske,gskc,gsk->gsec", expert_GxSxKxE, slot_GxSxKxC, weight_GxSxK)
  x_GxExCxD = jnp.einsum("gsec,gsd->gecd", dispatch_GxSxExC.astype(x_GxSxD.dtype), x_GxSxD)
  y_GxExCxD = _exchange_and_run(w, x_GxExCxD)
  return jnp.einsum("gsec,gecd->gsd", combine_GxSxExC, y_GxExCxD.astype(jnp.float32))


def _gather_one_group(x_SxD, index_SxK, weight_SxK, kept_SxK, slot_SxK, e, capacity):
  """One group's buffer fill by index: [S, D] -> ([E, C, D] inputs, a function of the outputs)."""
  s, d = x_SxD.shape
  row_SxK = jnp.where(kept_SxK, index_SxK * capacity + slot_SxK, e * capacity)
  tok_SxK = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[:, None], row_SxK.shape)
  src_R = jnp.full((e * capacity,), s, jnp.int32).at[row_SxK.reshape(-1)].set(
      tok_SxK.reshape(-1), mode="drop")  # empty rows read the appended zero row
  x_padded = jnp.concatenate([x_SxD, jnp.zeros((1, d), x_SxD.dtype)], axis=0)
  return x_padded[src_R].reshape(e, capacity, d), row_SxK, jnp.where(kept_SxK, weight_SxK, 0.0)


def _combine_one_group(y_ExCxD, row_SxK, weight_SxK):
  e, c, d = y_ExCxD.shape
  y_RxD = jnp.concatenate([y_ExCxD.reshape(e * c, d), jnp.zeros((1, d), y_ExCxD.dtype)])
  return jnp.einsum("skd,sk->sd", y_RxD[row_SxK].astype(jnp.float32), weight_SxK)


def _gather_groups(x_GxSxD, index_GxSxK, weight_GxSxK, kept_GxSxK, w, capacity):
  e = w.w_gate_ExDxF.shape[0]
  slot_GxSxK = group_slots(index_GxSxK, kept_GxSxK, e)
  fill = jax.vmap(lambda *a: _gather_one_group(*a, e, capacity))
  x_GxExCxD, row_GxSxK, weight_GxSxK = fill(x_GxSxD, index_GxSxK, weight_GxSxK, kept_GxSxK,
                                            slot_GxSxK)
  y_GxExCxD = _exchange_and_run(w, x_GxExCxD)
  return jax.vmap(_combine_one_group)(y_GxExCxD, row_GxSxK, weight_GxSxK)


def grouped_dispatch(backend, x_TxD, rt, w, groups, capacity):
  """Executes `rt` with G = `groups` dispatch groups and `capacity` rows per (expert, group)
  (`group_capacity`); `backend` (einsum | gather) says how each group fills and reads its
  buffers. [T, D] -> [T, D] (float32 sums, cast back to x's dtype)."""
  t, d = x_TxD.shape
  k = rt.expert_index.shape[1]
  s = -(-t // groups)
  pad = lambda a: _pad_rows(a, groups * s)
  x_GxSxD = layers.constrain(pad(x_TxD).reshape(groups, s, d), GROUP_TOKEN_AXES)
  pairs = [layers.constrain(pad(a).reshape(groups, s, k), GROUP_PAIR_AXES)
           for a in (rt.expert_index, rt.combine_weight, rt.kept)]  # padding: kept = False
  run = _einsum_groups if backend == "einsum" else _gather_groups
  y_GxSxD = layers.constrain(run(x_GxSxD, *pairs, w, capacity), GROUP_TOKEN_AXES)
  return y_GxSxD.reshape(groups * s, d)[:t].astype(x_TxD.dtype)
