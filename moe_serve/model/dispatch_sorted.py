"""The `sorted` dispatch backend: kept (token, expert) pairs in fixed blocks, one expert per block.

Every kept pair gets a row of a flat buffer `[N * M, D]` in which each expert's pairs are
contiguous and start at a block boundary (its rank among the expert's kept pairs, as in the
`gather` backend, after the blocks of the experts before it). The blocks are run one after the
other, each through its own expert's SwiGLU, in a loop whose trip count is the number of blocks
the routing actually uses: the work follows the routed pairs (about K / E of evaluating every
expert on every token, plus at most one part-filled block per expert), while every array keeps a
static shape (N is the bound for T * K pairs), so a step compiles once.

A pair's output depends only on its own row: each block is the same `[M, D]` matmul chain
whatever else the step holds, and padding rows read an appended zero row. Pairs that are not kept
(dropped for capacity, or padding) get no row, so any scope runs and only kept pairs cost.

Used by `dispatch.run` for backend `sorted` when the experts are not split over the mesh (with
split experts the grouped all-to-all path runs instead; dispatch_grouped.py).

Axis letters (docs/design.md section 2): T flat tokens, D model, F expert FFN hidden, E experts,
K choices per token, A = T * K (token, choice) pairs, N blocks, M rows per block,
R = N * M buffer rows (+1: an appended zero row).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

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
  pair, R if not kept; expert_N: the expert of each block; used: blocks in use, a scalar).
  """
  t, k = expert_index_TxK.shape
  e, m = num_experts, block_rows
  n = num_blocks(t * k, e, m)
  count_E = jnp.zeros((e,), jnp.int32).at[expert_index_TxK.reshape(-1)].add(
      kept_TxK.reshape(-1).astype(jnp.int32))
  end_block_E = jnp.cumsum(-(-count_E // m))
  first_block_E = end_block_E - (-(-count_E // m))
  row_TxK = jnp.where(kept_TxK, first_block_E[expert_index_TxK] * m + slot_TxK, n * m)
  tok_TxK = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[:, None], (t, k))
  src_R = jnp.full((n * m,), t, jnp.int32).at[row_TxK.reshape(-1)].set(
      tok_TxK.reshape(-1), mode="drop")
  expert_N = jnp.searchsorted(end_block_E, jnp.arange(n, dtype=jnp.int32), side="right")
  return src_R, row_TxK, jnp.minimum(expert_N, e - 1).astype(jnp.int32), end_block_E[-1]


def sorted_dispatch(x_TxD, routing, w, slot_TxK, block_rows=BLOCK_ROWS):
  """Executes `routing` block by block (see the module docstring): [T, D] -> [T, D] float32
  sums cast back to x's dtype. `w`: dispatch.ExpertWeights; `slot_TxK`: dispatch.buffer_slots."""
  t, d = x_TxD.shape
  e, m = w.w_gate_ExDxF.shape[0], block_rows
  src_R, row_TxK, expert_N, used = layout(routing.expert_index, slot_TxK, routing.kept, e, m)
  n = expert_N.shape[0]
  x_padded = jnp.concatenate([x_TxD, jnp.zeros((1, d), x_TxD.dtype)], axis=0)
  x_NxMxD = x_padded[src_R].reshape(n, m, d)
  dt = x_TxD.dtype

  def block(i, y_NxMxD):
    pick = lambda a: jax.lax.dynamic_index_in_dim(a, expert_N[i], keepdims=False).astype(dt)
    x_MxD = x_NxMxD[i]
    h_MxF = nn.silu(x_MxD @ pick(w.w_gate_ExDxF)) * (x_MxD @ pick(w.w_up_ExDxF))
    return y_NxMxD.at[i].set(h_MxF @ pick(w.w_down_ExFxD))

  y_NxMxD = jax.lax.fori_loop(0, used, block, jnp.zeros_like(x_NxMxD))
  y_RxD = jnp.concatenate([y_NxMxD.reshape(n * m, d), jnp.zeros((1, d), dt)])
  weight_TxK = jnp.where(routing.kept, routing.combine_weight, 0.0)
  y_TxD = jnp.einsum("tkd,tk->td", y_RxD[row_TxK].astype(jnp.float32), weight_TxK)
  return y_TxD.astype(x_TxD.dtype)
