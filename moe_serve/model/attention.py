"""Rotary grouped-query attention over a step's parts, with or without the slot KV cache.

With a cache, every part first writes its real tokens' keys/values into its slot rows (padding
is dropped), then every query attends to its slot's row at key positions <= its own. A request's
positions 0..p are all written by that request before it reads them, so whatever an earlier
occupant left in the slot past p is masked out: slots leak nothing.

The cache is heads-major: keys `[S, M, H, J]`, values `[S, M, J, H]`. One slot's keys or values
for one KV head are contiguous, so a decode row reads `M` runs of `kv_len x H` values each (the
layout paged-attention kernels use too). Decode rows (L = 1) take their scores and weighted values
as elementwise products and sums: scores sum over H, which in the key layout is an outer axis, so
the products accumulate across whole vectors of positions (on the 2-core AVX2 CPU, decode
attention per layer at 64 rows and kv_len 128 took 1.7 ms this way against 2.6 ms with keys
`[S, M, J, H]`, whose H-innermost sums reduce within short vectors); weighted values sum over J
with H innermost. On XLA:CPU that is one fused pass over the keys, where a batched matmul per
(row, head) of [Q x H] x [H x J] ran as hundreds of tiny dots (benchmarks/RESULTS.md, "Speed").

Axis letters (docs/design.md section 2): B rows of the part, L tokens per row (query positions),
D model, N query heads, M KV heads, Q = N / M query heads per KV head, H head dim, S cache slots,
J key positions (a cache row's first `kv_len` positions, or L without a cache).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_serve.model import invariant, layers
from moe_serve.model.parts import Part

_MASKED = -1e30  # finite, so fully masked (padding) rows give a uniform softmax, not NaN

# Logical axis names of one layer's cache arrays (parallel/sharding.py maps them to the mesh).
CACHE_AXES = {"k": ("decode_batch", "cache_heads", "cache_kv", "cache_seq"),  # [S, M, H, J]
              "v": ("decode_batch", "cache_heads", "cache_seq", "cache_kv")}  # [S, M, J, H]


def _position_axis(which):
  """The axis of cache positions (J) in the keys ("k") or values ("v") of a cache layer."""
  return CACHE_AXES[which].index("cache_seq")


def init_cache_layer(num_slots, max_len, num_kv_heads, head_dim, dtype=jnp.float32):
  """One layer's zeroed KV cache: {"k": [S, M, H, J], "v": [S, M, J, H]} with J = max_len."""
  size = {"decode_batch": num_slots, "cache_heads": num_kv_heads, "cache_kv": head_dim,
          "cache_seq": max_len}
  return {c: jnp.zeros(tuple(size[a] for a in axes), dtype) for c, axes in CACHE_AXES.items()}


def write_cache(cache, which, slots_B, positions_BxL, valid_BxL, new_BxLxMxH):
  """Scatters new keys (`which` "k", cache [S, M, H, J]) or values ("v", [S, M, J, H]) into
  (slot, position); invalid tokens are dropped."""
  axis = _position_axis(which)
  pos = jnp.where(valid_BxL, positions_BxL, cache.shape[axis])  # out of range -> dropped
  rows = jnp.broadcast_to(slots_B[:, None], pos.shape)
  # Index arrays on axis 0 and the position axis around slices: updated values are [B, L, M, H].
  at = cache.at[rows, :, pos] if axis == 2 else cache.at[rows, :, :, pos]
  return at.set(new_BxLxMxH.astype(cache.dtype), mode="drop")


def attend(q_BxLxNxH, k_BxMxHxJ, v_BxMxJxH, mask_BxLxJ):
  """Grouped-query softmax attention in float32: query l of row b attends key j where
  mask_BxLxJ[b, l, j]. Returns [B, L, N, H]. One query per row (decode) is computed as
  elementwise products and sums (module docstring); longer rows as batched matmuls."""
  b, length, n, h = q_BxLxNxH.shape
  m = k_BxMxHxJ.shape[1]
  k_BxMxHxJ, v_BxMxJxH = k_BxMxHxJ.astype(jnp.float32), v_BxMxJxH.astype(jnp.float32)
  if length == 1:
    q_BxMxQxHx1 = q_BxLxNxH.reshape(b, m, n // m, h, 1).astype(jnp.float32)
    logits_BxMxQxJ = jnp.sum(q_BxMxQxHx1 * k_BxMxHxJ[:, :, None], axis=3) * h**-0.5
    logits_BxMxQxJ = jnp.where(mask_BxLxJ[:, :, None], logits_BxMxQxJ, _MASKED)
    probs_BxMxQxJ = jax.nn.softmax(logits_BxMxQxJ, axis=-1)
    out_BxMxQxH = jnp.sum(probs_BxMxQxJ[..., None] * v_BxMxJxH[:, :, None], axis=3)
    return out_BxMxQxH.reshape(b, 1, n, h)
  q_BxLxMxQxH = q_BxLxNxH.reshape(b, length, m, n // m, h).astype(jnp.float32)
  logits_BxMxQxLxJ = jnp.einsum("blmqh,bmhj->bmqlj", q_BxLxMxQxH, k_BxMxHxJ)
  logits_BxMxQxLxJ *= h**-0.5
  logits_BxMxQxLxJ = jnp.where(mask_BxLxJ[:, None, None], logits_BxMxQxLxJ, _MASKED)
  probs_BxMxQxLxJ = jax.nn.softmax(logits_BxMxQxLxJ, axis=-1)
  out_BxLxMxQxH = jnp.einsum("bmqlj,bmjh->blmqh", probs_BxMxQxLxJ, v_BxMxJxH)
  return out_BxLxMxQxH.reshape(b, length, n, h)


def _in_slot_order(q_BxLxNxH, part: Part, num_slots):
  """Decode queries [B, 1, N, H] scattered to their slots, [S, 1, N, H], with each slot's query
  position [S, 1] (-1: no query there, so every key is masked); padding rows are dropped."""
  at_B = jnp.where(part.segment_ids_BxL[:, 0] >= 0, part.slots_B, num_slots)
  q_SxLxNxH = jnp.zeros((num_slots,) + q_BxLxNxH.shape[1:], q_BxLxNxH.dtype).at[at_B].set(
      q_BxLxNxH, mode="drop")
  pos_SxL = jnp.full((num_slots, 1), -1, jnp.int32).at[at_B].set(part.positions_BxL, mode="drop")
  return q_SxLxNxH, pos_SxL


def attend_chunked(q_BxLxNxH, chunk_at, num_chunks, num_kv_heads):
  """The batch-invariant `attend` (model.batch_invariant): keys in chunks of KV_CHUNK positions,
  `chunk_at(c)` -> (keys [B, M, H, KV_CHUNK], values [B, M, KV_CHUNK, H], mask [B, L, KV_CHUNK])
  of chunk c, folded in position order with an online softmax. Returns [B, L, N, H].

  Every sum is `invariant.sum_terms` over a fixed number of terms (H for a score, KV_CHUNK for a
  chunk's weights and values), so a query's bits depend on its own keys only, not on B, L or
  how many chunks run. A chunk whose keys are all masked for a query leaves its running state
  exactly unchanged (max unchanged, rescale exp(0) = 1, weights exp(-1e30 - max) = 0): a longer
  kv bucket only runs more chunks that change nothing. Decode and prefill queries run the same
  expression, so a token's attention has the same bits in either part (recompute after
  preemption gives the same keys and values).
  """
  b, length, n, h = q_BxLxNxH.shape
  m = num_kv_heads
  q_BxMxQxLxH = jnp.transpose(q_BxLxNxH.reshape(b, length, m, n // m, h).astype(jnp.float32),
                              (0, 2, 3, 1, 4))
  scale = h**-0.5

  def fold(c, state):
    max_BxMxQxL, sum_BxMxQxL, out_BxMxQxLxH = state
    k_BxMxHxJ, v_BxMxJxH, mask_BxLxJ = chunk_at(c)
    k_BxMxHxJ, v_BxMxJxH = k_BxMxHxJ.astype(jnp.float32), v_BxMxJxH.astype(jnp.float32)
    logits_BxMxQxLxJ = invariant.sum_terms(
        [q_BxMxQxLxH[..., i, None] * k_BxMxHxJ[:, :, None, None, i] for i in range(h)]) * scale
    # Barriers keep the scores and weights as arrays: fused into the value sums, XLA recomputed
    # them per term (the serving mixed step took 1.75x of off; 1.30x with the barriers).
    logits_BxMxQxLxJ = jnp.where(mask_BxLxJ[:, None, None], logits_BxMxQxLxJ, _MASKED)
    logits_BxMxQxLxJ = jax.lax.optimization_barrier(logits_BxMxQxLxJ)
    new_max_BxMxQxL = jnp.maximum(max_BxMxQxL, jnp.max(logits_BxMxQxLxJ, axis=-1))
    rescale_BxMxQxL = jnp.exp(max_BxMxQxL - new_max_BxMxQxL)
    probs_BxMxQxLxJ = jnp.exp(logits_BxMxQxLxJ - new_max_BxMxQxL[..., None])
    probs_BxMxQxLxJ = jax.lax.optimization_barrier(probs_BxMxQxLxJ)
    j = probs_BxMxQxLxJ.shape[-1]
    new_sum = sum_BxMxQxL * rescale_BxMxQxL + invariant.sum_terms(
        [probs_BxMxQxLxJ[..., i] for i in range(j)])
    new_out = out_BxMxQxLxH * rescale_BxMxQxL[..., None] + invariant.sum_terms(
        [probs_BxMxQxLxJ[..., i, None] * v_BxMxJxH[:, :, None, None, i] for i in range(j)])
    return new_max_BxMxQxL, new_sum, new_out

  init = (jnp.full(q_BxMxQxLxH.shape[:-1], -jnp.inf, jnp.float32),
          jnp.zeros(q_BxMxQxLxH.shape[:-1], jnp.float32), jnp.zeros_like(q_BxMxQxLxH))
  _, sum_BxMxQxL, out_BxMxQxLxH = jax.lax.fori_loop(0, num_chunks, fold, init)
  out_BxMxQxLxH = out_BxMxQxLxH / sum_BxMxQxL[..., None]
  return jnp.transpose(out_BxMxQxLxH, (0, 3, 1, 2, 4)).reshape(b, length, n, h)


def _chunks_of(k_BxMxHxJ, v_BxMxJxH, mask_BxLxJ):
  """`attend_chunked`'s (chunk_at, num_chunks) over whole arrays, J padded with masked keys."""
  j = k_BxMxHxJ.shape[-1]
  pad = -j % invariant.KV_CHUNK
  k_BxMxHxJ = jnp.pad(k_BxMxHxJ, [(0, 0)] * 3 + [(0, pad)])
  v_BxMxJxH = jnp.pad(v_BxMxJxH, [(0, 0), (0, 0), (0, pad), (0, 0)])
  mask_BxLxJ = jnp.pad(mask_BxLxJ, [(0, 0), (0, 0), (0, pad)])
  size = invariant.KV_CHUNK
  chunk_at = lambda c: (jax.lax.dynamic_slice_in_dim(k_BxMxHxJ, c * size, size, axis=3),
                        jax.lax.dynamic_slice_in_dim(v_BxMxJxH, c * size, size, axis=2),
                        jax.lax.dynamic_slice_in_dim(mask_BxLxJ, c * size, size, axis=2))
  return chunk_at, (j + pad) // size


def attend_cache_chunked(q_BxLxNxH, cache_layer, part: Part, kv_len=None):
  """`attend_cache` in the batch-invariant mode: each row reads its own slot's cache positions
  chunk by chunk (the first kv_len, rounded up to whole chunks). Returns [B, L, N, H].

  With model.max_len a multiple of KV_CHUNK the chunks are read in place; otherwise the layer is
  first padded with masked positions (a copy per layer and step: pick such a max_len)."""
  size = invariant.KV_CHUNK
  max_len = cache_layer["v"].shape[_position_axis("v")]
  num_chunks = -(-(kv_len or max_len) // size)
  if max_len % size:
    cache_layer = {w: jnp.pad(a, [(0, -max_len % size) if i == _position_axis(w) else (0, 0)
                                  for i in range(a.ndim)]) for w, a in cache_layer.items()}

  b, length = q_BxLxNxH.shape[:2]
  s = cache_layer["k"].shape[0]
  slot_order = length == 1 and b >= s
  if slot_order:  # decode rows that can fill every slot: in slot order, as attend_cache does
    q_BxLxNxH, positions_BxL = _in_slot_order(q_BxLxNxH, part, s)
  else:
    positions_BxL = part.positions_BxL

  def rows_chunk(which, start):
    """Chunk `start` of every row's slot: in slot order a slice of the cache, read in place;
    otherwise one gather of [B, ...] windows. The same values either way."""
    cache, axis = cache_layer[which], _position_axis(which)
    if slot_order:
      return jax.lax.dynamic_slice_in_dim(cache, start, size, axis=axis)
    window = tuple(size if i == axis else (1 if i == 0 else n) for i, n in enumerate(cache.shape))
    at = lambda slot: jax.lax.dynamic_slice(
        cache, tuple(slot if i == 0 else (start if i == axis else 0) for i in range(cache.ndim)),
        window)[0]
    return jax.vmap(at)(part.slots_B)

  def chunk_at(c):
    start = c * size
    k_BxMxHxJ, v_BxMxJxH = rows_chunk("k", start), rows_chunk("v", start)
    key_pos_J = start + jnp.arange(size, dtype=jnp.int32)
    return k_BxMxHxJ, v_BxMxJxH, key_pos_J[None, None, :] <= positions_BxL[:, :, None]

  out_BxLxNxH = attend_chunked(q_BxLxNxH, chunk_at, num_chunks, cache_layer["k"].shape[1])
  return out_BxLxNxH[part.slots_B] if slot_order else out_BxLxNxH


def attend_cache(q_BxLxNxH, cache_layer, part: Part, kv_len=None):
  """Attention of a part's queries over their slots' first `kv_len` cache positions (all of
  them by default): query at position p attends keys 0..p. Returns [B, L, N, H].

  Masked keys weigh exactly 0, but the softmax and the weighted sum reduce over kv_len positions,
  so another kv_len sums in another order: a row's bits can change with the bucket (they do on
  AVX-512 hosts); `attend_cache_chunked` (model.batch_invariant) is the invariant read. Decode
  rows that can fill every slot (L = 1, B >= S) attend in slot order, straight from the cache: their
  queries are scattered to their slots and the outputs gathered back, [B, N, H] each way, where
  gathering the rows' keys and values would copy [B, M, kv_len, H] twice per layer. Either way
  each row's result depends on its own slot only.
  """
  b, length = q_BxLxNxH.shape[:2]
  s = cache_layer["k"].shape[0]
  held = lambda c: jax.lax.slice_in_dim(cache_layer[c], 0, kv_len, axis=_position_axis(c))
  if length == 1 and b >= s:
    q_SxLxNxH, pos_SxL = _in_slot_order(q_BxLxNxH, part, s)
    keys_SxMxHxJ, vals_SxMxJxH = (layers.constrain(held(c), CACHE_AXES[c]) for c in ("k", "v"))
    key_pos_J = jnp.arange(vals_SxMxJxH.shape[2], dtype=jnp.int32)
    out_SxLxNxH = attend(q_SxLxNxH, keys_SxMxHxJ, vals_SxMxJxH,
                         key_pos_J[None, None, :] <= pos_SxL[:, :, None])
    return out_SxLxNxH[part.slots_B]  # padding rows read slot 0's: finite, never used
  keys_BxMxHxJ, vals_BxMxJxH = (layers.constrain(held(c)[part.slots_B], CACHE_AXES[c])
                                for c in ("k", "v"))
  key_pos_J = jnp.arange(vals_BxMxJxH.shape[2], dtype=jnp.int32)
  mask_BxLxJ = key_pos_J[None, None, :] <= part.positions_BxL[:, :, None]
  return attend(q_BxLxNxH, keys_BxMxHxJ, vals_BxMxJxH, mask_BxLxJ)


def _across_heads(norm):
  """`norm` (an RMSNorm) applied over the concatenated heads (N*H values per token)."""
  def apply(x_BxLxNxH):
    b, length, n, h = x_BxLxNxH.shape
    return norm(x_BxLxNxH.reshape(b, length, n * h)).reshape(b, length, n, h)
  return apply


class Attention(nn.Module):
  """Rotary grouped-query self-attention of a step's parts, reading and writing the slot KV cache.

  Every part writes its keys and values before any part reads: a part that read the cache before
  the next part's write made XLA copy the whole layer cache to keep the read intact (8 MB per
  layer per step at the tiny Mixtral's 64 slots). Reads see the same values either way, since
  each row reads only its own slot.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  dtype: str = "float32"
  bias: bool = False  # q/k/v projection bias (Qwen2-MoE)
  qk_norm: str = "none"  # RMSNorm on q and k before rotary: none | head (over H) | full (N*H)
  norm_eps: float = 1e-6
  invariant: bool = False  # model.batch_invariant: row-tiled projections, chunked attention

  @nn.compact
  def __call__(self, xs_BxLxD, parts: Sequence[Part], cache_layer=None, kv_len=None):
    """Returns (outputs [B, L, D] per part, zeros for a part without tokens; updated cache
    layer or None). `kv_len` (static, default the cache's max_len): read only the first kv_len
    positions of each row, which must hold every position a query attends (the engine picks it
    from its kv-length buckets).
    Without a cache each part attends within itself (causal, per segment)."""
    d = xs_BxLxD[0].shape[-1]
    dt = layers.dtype_of(self.dtype)
    n, m, h = self.num_heads, self.num_kv_heads, self.head_dim
    wq = layers.param_with_axes(self, "wq", (d, n, h), ("embed", "q_heads", "head_dim"))
    wk = layers.param_with_axes(self, "wk", (d, m, h), ("embed", "kv_heads", "head_dim"))
    wv = layers.param_with_axes(self, "wv", (d, m, h), ("embed", "kv_heads", "head_dim"))
    wo = layers.param_with_axes(self, "wo", (n, h, d), ("q_heads", "head_dim", "embed"),
                                nn.initializers.normal(stddev=(n * h) ** -0.5))
    if self.bias:
      zeros = nn.initializers.zeros
      bias_q = layers.param_with_axes(self, "bq", (n, h), ("q_heads", "head_dim"), zeros)
      bias_k = layers.param_with_axes(self, "bk", (m, h), ("kv_heads", "head_dim"), zeros)
      bias_v = layers.param_with_axes(self, "bv", (m, h), ("kv_heads", "head_dim"), zeros)
    q_norm = k_norm = None
    if self.qk_norm == "head":  # one scale [H] shared by the heads (Qwen3-MoE)
      q_norm = layers.RMSNorm(self.norm_eps, self.invariant, name="q_norm")
      k_norm = layers.RMSNorm(self.norm_eps, self.invariant, name="k_norm")
    elif self.qk_norm == "full":  # over all heads at once, scales [N*H] and [M*H] (OLMoE)
      q_norm = _across_heads(layers.RMSNorm(self.norm_eps, self.invariant, name="q_norm"))
      k_norm = _across_heads(layers.RMSNorm(self.norm_eps, self.invariant, name="k_norm"))

    def project(x_BxLxD, part):
      x = x_BxLxD.astype(dt)
      q_BxLxNxH, k_BxLxMxH, v_BxLxMxH = (invariant.matmul(x, w.astype(dt), self.invariant)
                                         for w in (wq, wk, wv))
      if self.bias:
        q_BxLxNxH += bias_q.astype(dt)
        k_BxLxMxH += bias_k.astype(dt)
        v_BxLxMxH += bias_v.astype(dt)
      if q_norm is not None:
        q_BxLxNxH, k_BxLxMxH = q_norm(q_BxLxNxH), k_norm(k_BxLxMxH)
      q_BxLxNxH = layers.rotary(q_BxLxNxH, part.positions_BxL, self.rope_theta)
      k_BxLxMxH = layers.rotary(k_BxLxMxH, part.positions_BxL, self.rope_theta)
      return q_BxLxNxH, k_BxLxMxH, v_BxLxMxH

    live = [i for i, x in enumerate(xs_BxLxD) if x.shape[0] * x.shape[1]]
    qkv = {i: project(xs_BxLxD[i], parts[i]) for i in live}
    outs = {}
    if cache_layer is None:  # self-attention within each part, causal and per segment
      for i in live:
        part, (q_BxLxNxH, k_BxLxMxH, v_BxLxMxH) = parts[i], qkv[i]
        same_seg = part.segment_ids_BxL[:, :, None] == part.segment_ids_BxL[:, None, :]
        causal = part.positions_BxL[:, None, :] <= part.positions_BxL[:, :, None]
        valid_BxL = part.segment_ids_BxL >= 0
        mask_BxLxJ = same_seg & causal & valid_BxL[:, None, :]  # J = L: the part's own keys
        kv = (jnp.transpose(k_BxLxMxH, (0, 2, 3, 1)), jnp.transpose(v_BxLxMxH, (0, 2, 1, 3)))
        if self.invariant:
          outs[i] = attend_chunked(q_BxLxNxH, *_chunks_of(*kv, mask_BxLxJ), m)
        else:
          outs[i] = attend(q_BxLxNxH, *kv, mask_BxLxJ)
    else:
      for i in live:
        part, (_, k_BxLxMxH, v_BxLxMxH) = parts[i], qkv[i]
        valid_BxL = part.segment_ids_BxL >= 0
        new = {"k": k_BxLxMxH, "v": v_BxLxMxH}
        cache_layer = {c: write_cache(cache_layer[c], c, part.slots_B, part.positions_BxL,
                                      valid_BxL, new[c]) for c in ("k", "v")}
      read = attend_cache_chunked if self.invariant else attend_cache
      for i in live:
        outs[i] = read(qkv[i][0], cache_layer, parts[i], kv_len)
    ys = [invariant.matmul(outs[i].astype(dt), wo.astype(dt), self.invariant, axes=2)
          if i in outs else jnp.zeros_like(x) for i, x in enumerate(xs_BxLxD)]
    return ys, cache_layer
