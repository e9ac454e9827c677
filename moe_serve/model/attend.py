"""Softmax attention over the slot KV cache or within a part: the reads every attention kind
shares (grouped-query `attention.Attention`, latent `mla.LatentAttention`).

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

A latent cache (model.attention="mla") has keys only, `{"k": [S, 1, Hc+Hr, J]}`: one key head
whose first Hc dims are also the values (`value_dim`), so the reads below take values either from
a "v" array or from the keys' first `value_dim` dims; the value width may differ from the key
width. Options every read takes: `scale` (the softmax scale, default Hk^-0.5), `window`
(model.sliding_window: a query at p attends keys p - window + 1 .. p; 0 = all of 0..p) and
`sinks_N` (model.attn_sinks: one logit per query head joins every softmax, then is dropped). A
windowed layer's cache is not shortened: it stays max_len positions per slot (vLLM keeps only the
window; that is later work), and its kv buckets still cover every row's last position.

Axis letters (docs/design.md section 2): B rows of the part, L tokens per row (query positions),
N query heads, M KV heads, Q = N / M query heads per KV head, H head dim (Hk key width, Hv value
width where they differ), S cache slots, J key positions (a cache row's first `kv_len` positions,
or L without a cache), Hc latent width (MLA's kv_lora_rank), Hr rotary key width.
"""
import jax
import jax.numpy as jnp

from moe_serve.model import invariant, layers
from moe_serve.model.parts import Part

_MASKED = -1e30  # finite, so fully masked (padding) rows give a uniform softmax, not NaN

# Logical axis names of one layer's cache arrays (parallel/sharding.py maps them to the mesh).
CACHE_AXES = {"k": ("decode_batch", "cache_heads", "cache_kv", "cache_seq"),  # [S, M, H, J]
              "v": ("decode_batch", "cache_heads", "cache_seq", "cache_kv")}  # [S, M, J, H]
# The latent cache of model.attention="mla": one key head [S, 1, Hc+Hr, J], never split over heads
# (one head): on a mesh its slots follow decode_batch and each tensor shard holds the whole latent
# of its slots, as the queries' heads are what the tensor axis splits.
LATENT_CACHE_AXES = {"k": ("decode_batch", None, "cache_kv", "cache_seq")}


def cache_axes(model_cfg):
  """The logical axes of one cache layer's arrays for the model's attention kind."""
  return LATENT_CACHE_AXES if model_cfg.get("attention", "gqa") == "mla" else CACHE_AXES


def _layer_axes(cache_layer):
  return CACHE_AXES if "v" in cache_layer else LATENT_CACHE_AXES


def position_axis(which):
  """The axis of cache positions (J) in the keys ("k") or values ("v") of a cache layer."""
  return CACHE_AXES[which].index("cache_seq")


def cache_layer_shapes(model_cfg, num_slots):
  """{name: shape} of one zeroed cache layer: GQA keys [S, M, H, J] and values [S, M, J, H], or
  the latent keys [S, 1, Hc+Hr, J]; J = model.max_len."""
  m = model_cfg
  if m.get("attention", "gqa") == "mla":
    return {"k": (num_slots, 1, m.kv_lora_rank + m.qk_rope_head_dim, m.max_len)}
  size = {"decode_batch": num_slots, "cache_heads": m.num_kv_heads, "cache_kv": m.head_dim,
          "cache_seq": m.max_len}
  return {c: tuple(size[a] for a in axes) for c, axes in CACHE_AXES.items()}


def write_cache(cache, which, slots_B, positions_BxL, valid_BxL, new_BxLxMxH):
  """Scatters new keys (`which` "k", cache [S, M, H, J]) or values ("v", [S, M, J, H]) into
  (slot, position); invalid tokens are dropped."""
  axis = position_axis(which)
  pos = jnp.where(valid_BxL, positions_BxL, cache.shape[axis])  # out of range -> dropped
  rows = jnp.broadcast_to(slots_B[:, None], pos.shape)
  # Index arrays on axis 0 and the position axis around slices: updated values are [B, L, M, H].
  at = cache.at[rows, :, pos] if axis == 2 else cache.at[rows, :, :, pos]
  return at.set(new_BxLxMxH.astype(cache.dtype), mode="drop")


def causal_mask(key_pos_xJ, query_pos_xL, window=0):
  """[..., L, J]: key position <= query position, and within `window` positions when > 0."""
  mask = key_pos_xJ[..., None, :] <= query_pos_xL[..., :, None]
  if window:
    mask &= key_pos_xJ[..., None, :] > query_pos_xL[..., :, None] - window
  return mask


def _with_sinks(logits_BxMxQx_xJ, sinks_N):
  """Softmax over each row's scores and its head's sink logit, the sink's weight dropped."""
  m, q = logits_BxMxQx_xJ.shape[1:3]
  sink = sinks_N.astype(jnp.float32).reshape((1, m, q) + (1,) * (logits_BxMxQx_xJ.ndim - 3))
  sink = jnp.broadcast_to(sink, logits_BxMxQx_xJ.shape[:-1] + (1,))
  return jax.nn.softmax(jnp.concatenate([logits_BxMxQx_xJ, sink], axis=-1), axis=-1)[..., :-1]


def attend(q_BxLxNxH, k_BxMxHxJ, v_BxMxJxH, mask_BxLxJ, scale=None, sinks_N=None,
           value_dim=None):
  """Grouped-query softmax attention in float32: query l of row b attends key j where
  mask_BxLxJ[b, l, j]. Returns [B, L, N, Hv]. Values from `v_BxMxJxH`, or (None) the keys'
  first `value_dim` dims. One query per row (decode) is computed as elementwise products and
  sums (module docstring); longer rows as batched matmuls."""
  b, length, n, h = q_BxLxNxH.shape
  m = k_BxMxHxJ.shape[1]
  scale = h**-0.5 if scale is None else scale
  softmax = jax.nn.softmax if sinks_N is None else (lambda x, axis: _with_sinks(x, sinks_N))
  k_BxMxHxJ = k_BxMxHxJ.astype(jnp.float32)
  if v_BxMxJxH is not None:
    v_BxMxJxH = v_BxMxJxH.astype(jnp.float32)
  if length == 1:
    q_BxMxQxHx1 = q_BxLxNxH.reshape(b, m, n // m, h, 1).astype(jnp.float32)
    logits_BxMxQxJ = jnp.sum(q_BxMxQxHx1 * k_BxMxHxJ[:, :, None], axis=3) * scale
    logits_BxMxQxJ = jnp.where(mask_BxLxJ[:, :, None], logits_BxMxQxJ, _MASKED)
    probs_BxMxQxJ = softmax(logits_BxMxQxJ, axis=-1)
    if v_BxMxJxH is None:  # values = the keys' first value_dim dims, [B, M, Hv, J]
      out_BxMxQxH = jnp.sum(probs_BxMxQxJ[:, :, :, None] * k_BxMxHxJ[:, :, None, :value_dim],
                            axis=-1)
    else:
      out_BxMxQxH = jnp.sum(probs_BxMxQxJ[..., None] * v_BxMxJxH[:, :, None], axis=3)
    return out_BxMxQxH.reshape(b, 1, n, out_BxMxQxH.shape[-1])
  q_BxLxMxQxH = q_BxLxNxH.reshape(b, length, m, n // m, h).astype(jnp.float32)
  logits_BxMxQxLxJ = jnp.einsum("blmqh,bmhj->bmqlj", q_BxLxMxQxH, k_BxMxHxJ)
  logits_BxMxQxLxJ *= scale
  logits_BxMxQxLxJ = jnp.where(mask_BxLxJ[:, None, None], logits_BxMxQxLxJ, _MASKED)
  probs_BxMxQxLxJ = softmax(logits_BxMxQxLxJ, axis=-1)
  if v_BxMxJxH is None:
    out_BxLxMxQxH = jnp.einsum("bmqlj,bmhj->blmqh", probs_BxMxQxLxJ, k_BxMxHxJ[:, :, :value_dim])
  else:
    out_BxLxMxQxH = jnp.einsum("bmqlj,bmjh->blmqh", probs_BxMxQxLxJ, v_BxMxJxH)
  return out_BxLxMxQxH.reshape(b, length, n, out_BxLxMxQxH.shape[-1])


def _in_slot_order(q_BxLxNxH, part: Part, num_slots):
  """Decode queries [B, 1, N, H] scattered to their slots, [S, 1, N, H], with each slot's query
  position [S, 1] (-1: no query there, so every key is masked); padding rows are dropped."""
  at_B = jnp.where(part.segment_ids_BxL[:, 0] >= 0, part.slots_B, num_slots)
  q_SxLxNxH = jnp.zeros((num_slots,) + q_BxLxNxH.shape[1:], q_BxLxNxH.dtype).at[at_B].set(
      q_BxLxNxH, mode="drop")
  pos_SxL = jnp.full((num_slots, 1), -1, jnp.int32).at[at_B].set(part.positions_BxL, mode="drop")
  return q_SxLxNxH, pos_SxL


def attend_chunked(q_BxLxNxH, chunk_at, num_chunks, num_kv_heads, scale=None, sinks_N=None,
                   value_dim=None):
  """The batch-invariant `attend` (model.batch_invariant): keys in chunks of KV_CHUNK positions,
  `chunk_at(c)` -> (keys [B, M, H, KV_CHUNK], values [B, M, KV_CHUNK, Hv] or None (the keys'
  first `value_dim` dims), mask [B, L, KV_CHUNK]) of chunk c, folded in position order with an
  online softmax. Returns [B, L, N, Hv].

  Every sum is `invariant.sum_terms` over a fixed number of terms (H for a score, KV_CHUNK for a
  chunk's weights and values), so a query's bits depend on its own keys only, not on B, L or
  how many chunks run. A chunk whose keys are all masked for a query leaves its running state
  exactly unchanged (max unchanged, rescale exp(0) = 1, weights exp(-1e30 - max) = 0): a longer
  kv bucket only runs more chunks that change nothing. With sinks the running max starts at the
  head's sink logit and the running sum at exp(sink - sink) = 1 (the sink's term, exact), which
  is the softmax over [scores, sink] with the sink's weight left out of the values. Decode and
  prefill queries run the same expression, so a token's attention has the same bits in either
  part (recompute after preemption gives the same keys and values).
  """
  b, length, n, h = q_BxLxNxH.shape
  m = num_kv_heads
  hv = h if value_dim is None else value_dim
  q_BxMxQxLxH = jnp.transpose(q_BxLxNxH.reshape(b, length, m, n // m, h).astype(jnp.float32),
                              (0, 2, 3, 1, 4))
  scale = h**-0.5 if scale is None else scale

  def fold(c, state):
    max_BxMxQxL, sum_BxMxQxL, out_BxMxQxLxH = state
    k_BxMxHxJ, v_BxMxJxH, mask_BxLxJ = chunk_at(c)
    k_BxMxHxJ = k_BxMxHxJ.astype(jnp.float32)
    if v_BxMxJxH is None:  # values: the keys' first hv dims, [B, M, J, Hv]
      v_BxMxJxH = jnp.swapaxes(k_BxMxHxJ[:, :, :hv], 2, 3)
    v_BxMxJxH = v_BxMxJxH.astype(jnp.float32)
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

  state_shape = q_BxMxQxLxH.shape[:-1]
  if sinks_N is None:
    init_max, init_sum = jnp.full(state_shape, -jnp.inf, jnp.float32), jnp.zeros(state_shape,
                                                                                 jnp.float32)
  else:
    sink_MxQ = sinks_N.astype(jnp.float32).reshape(m, n // m)
    init_max = jnp.broadcast_to(sink_MxQ[None, :, :, None], state_shape)
    init_sum = jnp.ones(state_shape, jnp.float32)
  init = (init_max, init_sum, jnp.zeros(state_shape + (hv,), jnp.float32))
  _, sum_BxMxQxL, out_BxMxQxLxH = jax.lax.fori_loop(0, num_chunks, fold, init)
  out_BxMxQxLxH = out_BxMxQxLxH / sum_BxMxQxL[..., None]
  return jnp.transpose(out_BxMxQxLxH, (0, 3, 1, 2, 4)).reshape(b, length, n, hv)


def chunks_of(k_BxMxHxJ, v_BxMxJxH, mask_BxLxJ):
  """`attend_chunked`'s (chunk_at, num_chunks) over whole arrays, J padded with masked keys;
  `v_BxMxJxH` None: values are the keys' first dims."""
  j = k_BxMxHxJ.shape[-1]
  pad = -j % invariant.KV_CHUNK
  size = invariant.KV_CHUNK
  k_BxMxHxJ = jnp.pad(k_BxMxHxJ, [(0, 0)] * 3 + [(0, pad)])
  mask_BxLxJ = jnp.pad(mask_BxLxJ, [(0, 0), (0, 0), (0, pad)])
  if v_BxMxJxH is not None:
    v_BxMxJxH = jnp.pad(v_BxMxJxH, [(0, 0), (0, 0), (0, pad), (0, 0)])
  chunk_at = lambda c: (
      jax.lax.dynamic_slice_in_dim(k_BxMxHxJ, c * size, size, axis=3),
      None if v_BxMxJxH is None else jax.lax.dynamic_slice_in_dim(v_BxMxJxH, c * size, size,
                                                                  axis=2),
      jax.lax.dynamic_slice_in_dim(mask_BxLxJ, c * size, size, axis=2))
  return chunk_at, (j + pad) // size


def attend_cache_chunked(q_BxLxNxH, cache_layer, part: Part, kv_len=None, scale=None, window=0,
                         sinks_N=None, value_dim=None):
  """`attend_cache` in the batch-invariant mode: each row reads its own slot's cache positions
  chunk by chunk (the first kv_len, rounded up to whole chunks). Returns [B, L, N, Hv].

  With model.max_len a multiple of KV_CHUNK the chunks are read in place; otherwise the layer is
  first padded with masked positions (a copy per layer and step: pick such a max_len)."""
  size = invariant.KV_CHUNK
  max_len = cache_layer["k"].shape[position_axis("k")]
  num_chunks = -(-(kv_len or max_len) // size)
  if max_len % size:
    cache_layer = {w: jnp.pad(a, [(0, -max_len % size) if i == position_axis(w) else (0, 0)
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
    if which not in cache_layer:
      return None
    cache, axis = cache_layer[which], position_axis(which)
    if slot_order:
      return jax.lax.dynamic_slice_in_dim(cache, start, size, axis=axis)
    window_shape = tuple(size if i == axis else (1 if i == 0 else n)
                         for i, n in enumerate(cache.shape))
    at = lambda slot: jax.lax.dynamic_slice(
        cache, tuple(slot if i == 0 else (start if i == axis else 0) for i in range(cache.ndim)),
        window_shape)[0]
    return jax.vmap(at)(part.slots_B)

  def chunk_at(c):
    start = c * size
    key_pos_J = start + jnp.arange(size, dtype=jnp.int32)
    return (rows_chunk("k", start), rows_chunk("v", start),
            causal_mask(key_pos_J[None], positions_BxL, window))

  out_BxLxNxH = attend_chunked(q_BxLxNxH, chunk_at, num_chunks, cache_layer["k"].shape[1],
                               scale, sinks_N, value_dim)
  return out_BxLxNxH[part.slots_B] if slot_order else out_BxLxNxH


def attend_cache(q_BxLxNxH, cache_layer, part: Part, kv_len=None, scale=None, window=0,
                 sinks_N=None, value_dim=None):
  """Attention of a part's queries over their slots' first `kv_len` cache positions (all of
  them by default): query at position p attends keys 0..p (p - window + 1 .. p with a window).
  Returns [B, L, N, Hv].

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
  axes = _layer_axes(cache_layer)
  held = lambda c: jax.lax.slice_in_dim(cache_layer[c], 0, kv_len, axis=position_axis(c))
  opts = dict(scale=scale, sinks_N=sinks_N, value_dim=value_dim)
  if length == 1 and b >= s:
    q_SxLxNxH, pos_SxL = _in_slot_order(q_BxLxNxH, part, s)
    keys_SxMxHxJ, vals_SxMxJxH = (layers.constrain(held(c), axes[c]) if c in cache_layer
                                  else None for c in ("k", "v"))
    key_pos_J = jnp.arange(keys_SxMxHxJ.shape[3], dtype=jnp.int32)
    out_SxLxNxH = attend(q_SxLxNxH, keys_SxMxHxJ, vals_SxMxJxH,
                         causal_mask(key_pos_J[None], pos_SxL, window), **opts)
    return out_SxLxNxH[part.slots_B]  # padding rows read slot 0's: finite, never used
  keys_BxMxHxJ, vals_BxMxJxH = (layers.constrain(held(c)[part.slots_B], axes[c])
                                if c in cache_layer else None for c in ("k", "v"))
  key_pos_J = jnp.arange(keys_BxMxHxJ.shape[3], dtype=jnp.int32)
  mask_BxLxJ = causal_mask(key_pos_J[None], part.positions_BxL, window)
  return attend(q_BxLxNxH, keys_BxMxHxJ, vals_BxMxJxH, mask_BxLxJ, **opts)


def attend_parts(qkv, parts, cache_layer, kv_len, invariant_mode, scale=None, window=0,
                 sinks_N=None, value_dim=None):
  """Every part's attention: `qkv` {part index: (queries [B, L, N, Hk], new {"k": [B, L, M, Hk],
  "v": [B, L, M, Hv]} or latent {"k": [B, L, 1, Hc+Hr]})} for the parts with tokens. Returns
  ({part index: [B, L, N, Hv]}, updated cache layer or None).

  Without a cache each part attends within itself (causal, per segment). With one, every part
  writes before any part reads: a part that read the cache before the next part's write made
  XLA copy the whole layer cache to keep the read intact (8 MB per layer per step at the tiny
  Mixtral's 64 slots). Reads see the same values either way, since each row reads only its own
  slot.
  """
  opts = dict(scale=scale, sinks_N=sinks_N, value_dim=value_dim)
  outs = {}
  if cache_layer is None:  # self-attention within each part, causal and per segment
    for i, (q_BxLxNxH, new) in qkv.items():
      part = parts[i]
      same_seg = part.segment_ids_BxL[:, :, None] == part.segment_ids_BxL[:, None, :]
      causal = causal_mask(part.positions_BxL, part.positions_BxL, window)
      valid_BxL = part.segment_ids_BxL >= 0
      mask_BxLxJ = same_seg & causal & valid_BxL[:, None, :]  # J = L: the part's own keys
      kv = (jnp.transpose(new["k"], (0, 2, 3, 1)),
            jnp.transpose(new["v"], (0, 2, 1, 3)) if "v" in new else None)
      if invariant_mode:
        outs[i] = attend_chunked(q_BxLxNxH, *chunks_of(*kv, mask_BxLxJ), kv[0].shape[1], **opts)
      else:
        outs[i] = attend(q_BxLxNxH, *kv, mask_BxLxJ, **opts)
    return outs, None
  for i, (_, new) in qkv.items():
    part = parts[i]
    valid_BxL = part.segment_ids_BxL >= 0
    cache_layer = {c: write_cache(cache_layer[c], c, part.slots_B, part.positions_BxL,
                                  valid_BxL, new[c]) for c in cache_layer}
  read = attend_cache_chunked if invariant_mode else attend_cache
  for i, (q_BxLxNxH, _) in qkv.items():
    outs[i] = read(q_BxLxNxH, cache_layer, parts[i], kv_len, window=window, **opts)
  return outs, cache_layer
