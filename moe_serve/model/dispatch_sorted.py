"""The `sorted` dispatch backend: kept (token, expert) pairs in fixed blocks, one expert per block.

Every kept pair gets a row of a flat buffer `[N * M, D]` in which each expert's pairs are
contiguous and start at a block boundary (its rank among the expert's kept pairs, as in the
`gather` backend, after the blocks of the experts before it). A loop over the experts that have
kept pairs picks each one's weights once and runs its blocks through its FFN (experts.ffn) in an
inner loop:
the work follows the routed pairs (about K / E of evaluating every expert on every token, plus
at most one part-filled block per expert), while every array keeps a static shape (N is the
bound for T * K pairs), so a step compiles once. Picking the weights per expert rather than per
block matters on XLA:CPU, where a matmul cannot read a traced slice in place: each pick copies
the expert's three matrices (benchmarks/RESULTS.md, "Speed").

A pair's output depends only on its own row: each block is the same `[M, D]` matmul chain
whatever else the step holds, and padding rows read an appended zero row. Pairs that are not kept
(dropped for capacity, or padding) get no row, so any scope runs and only kept pairs cost.

Used by `dispatch.run` for backend `sorted` when the experts are not split over the mesh (with
split experts the grouped all-to-all path runs instead; dispatch_grouped.py).

Axis letters (docs/design.md section 2): T flat tokens, D model, F expert FFN hidden, E experts,
K choices per token, A = T * K (token, choice) pairs, N blocks, M rows per block,
R = N * M buffer rows (+1: an appended zero row).
"""
import jax
import jax.numpy as jnp

from moe_serve.model import experts as experts_lib
from moe_serve.model import invariant as invariant_lib
from moe_serve.model import routing as routing_lib

# Rows per block. On the 2-core AVX2 CPU (tiny Mixtral shapes, D 256, F 512, T 64 and 192),
# 16 was fastest of 8/16/32: smaller blocks pay per-iteration overhead, larger ones padding.
BLOCK_ROWS = 16


def num_blocks(num_pairs, num_experts, block_rows=BLOCK_ROWS):
  """N: a static bound on the blocks any routing of `num_pairs` pairs needs (each expert's
  part-filled last block is at most one block more than the pairs alone)."""
  return -(-num_pairs // block_rows) + num_experts


def layout(expert_index_TxK, slot_TxK, kept_TxK, num_experts, block_rows=BLOCK_ROWS):
  """Where each kept pair goes. `slot_TxK`: its rank among its expert's kept pairs.

  Returns (src_R: token of each buffer row, T for an empty row; row_TxK: buffer row of each
  pair, R if not kept; first_E, end_E: expert e's blocks are first_E[e] .. end_E[e] - 1, so
  end_E[-1] blocks are in use).
  """
  t, k = expert_index_TxK.shape
  e, m = num_experts, block_rows
  n = num_blocks(t * k, e, m)
  # The same expression as the MoE's kept_pairs record, so XLA computes it once per layer.
  count_E = routing_lib.kept_per_expert(expert_index_TxK, kept_TxK, e)
  end_E = jnp.cumsum(-(-count_E // m))
  first_E = end_E - (-(-count_E // m))
  row_TxK = jnp.where(kept_TxK, first_E[expert_index_TxK] * m + slot_TxK, n * m)
  tok_TxK = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[:, None], (t, k))
  src_R = jnp.full((n * m,), t, jnp.int32).at[row_TxK.reshape(-1)].set(
      tok_TxK.reshape(-1), mode="drop")
  return src_R, row_TxK, first_E, end_E


def sorted_dispatch(x_TxD, routing, w, slot_TxK, block_rows=BLOCK_ROWS, invariant=False):
  """Executes `routing` expert by expert, block by block (see the module docstring): [T, D] ->
  [T, D] float32 sums cast back to x's dtype. `w`: experts.ExpertWeights; `slot_TxK`:
  dispatch.buffer_slots; `invariant` (model.batch_invariant): a token's K outputs are added in
  choice order as elementwise ops (invariant.sum_terms) rather than by a contraction."""
  t, d = x_TxD.shape
  e, m = w.num_experts, block_rows
  src_R, row_TxK, first_E, end_E = layout(routing.expert_index, slot_TxK, routing.kept, e, m)
  n = num_blocks(routing.kept.size, e, m)
  x_padded = jnp.concatenate([x_TxD, jnp.zeros((1, d), x_TxD.dtype)], axis=0)
  x_NxMxD = x_padded[src_R].reshape(n, m, d)
  dt = x_TxD.dtype
  # The experts with blocks, in order; only the first in_use_E.sum() entries are read.
  in_use_E = end_E > first_E
  experts_in_use_E = jnp.nonzero(in_use_E, size=e, fill_value=0)[0].astype(jnp.int32)

  def expert(j, y_NxMxD):
    i = experts_in_use_E[j]
    # Expert i's [D, F], [F, D] matrices and [F], [D] biases, picked once.
    w_i = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False).astype(dt), w)

    def block(b, y_NxMxD):
      return y_NxMxD.at[b].set(experts_lib.ffn(w_i, x_NxMxD[b], jnp.matmul))

    return jax.lax.fori_loop(first_E[i], end_E[i], block, y_NxMxD)

  y_NxMxD = jax.lax.fori_loop(0, jnp.sum(in_use_E), expert, jnp.zeros_like(x_NxMxD))
  y_RxD = jnp.concatenate([y_NxMxD.reshape(n * m, d), jnp.zeros((1, d), dt)])
  weight_TxK = jnp.where(routing.kept, routing.combine_weight, 0.0)
  y_TxKxD = y_RxD[row_TxK].astype(jnp.float32)
  if invariant:
    y_TxD = invariant_lib.sum_terms([y_TxKxD[:, i] * weight_TxK[:, i, None]
                                     for i in range(weight_TxK.shape[1])])
  else:
    y_TxD = jnp.einsum("tkd,tk->td", y_TxKxD, weight_TxK)
  return y_TxD.astype(x_TxD.dtype)
