"""Rotary grouped-query attention over a part, with or without the slot KV cache.

With a cache, a part first writes its real tokens' keys/values into its slot rows (padding is
dropped), then every query attends to its slot's row at key positions <= its own. A request's
positions 0..p are all written by that request before it reads them, so whatever an earlier
occupant left in the slot past p is masked out: slots leak nothing.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_serve.model import layers
from moe_serve.model.parts import Part

_MASKED = -1e30  # finite, so fully masked (padding) rows give a uniform softmax, not NaN


def init_cache_layer(num_slots, max_len, num_kv_heads, head_dim, dtype=jnp.float32):
  shape = (num_slots, max_len, num_kv_heads, head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def write_cache(cache_SxLxMxH, slots_B, positions_BxL, valid_BxL, new_BxLxMxH):
  """Scatters new keys or values into (slot, position); invalid tokens are dropped."""
  max_len = cache_SxLxMxH.shape[1]
  pos = jnp.where(valid_BxL, positions_BxL, max_len)  # out of range -> dropped
  rows = jnp.broadcast_to(slots_B[:, None], pos.shape)
  return cache_SxLxMxH.at[rows, pos].set(new_BxLxMxH.astype(cache_SxLxMxH.dtype), mode="drop")


def attend(q_BxLxNxH, k_BxSxMxH, v_BxSxMxH, mask_BxLxS):
  """Grouped-query softmax attention in float32; S is the key length here."""
  b, length, n, h = q_BxLxNxH.shape
  m = k_BxSxMxH.shape[2]
  q = q_BxLxNxH.reshape(b, length, m, n // m, h).astype(jnp.float32)
  logits_BxMxGxLxS = jnp.einsum("blmgh,bsmh->bmgls", q, k_BxSxMxH.astype(jnp.float32))
  logits_BxMxGxLxS *= h**-0.5
  logits_BxMxGxLxS = jnp.where(mask_BxLxS[:, None, None], logits_BxMxGxLxS, _MASKED)
  probs = jax.nn.softmax(logits_BxMxGxLxS, axis=-1)
  out = jnp.einsum("bmgls,bsmh->blmgh", probs, v_BxSxMxH.astype(jnp.float32))
  return out.reshape(b, length, n, h)


class Attention(nn.Module):
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x_BxLxD, part: Part, cache_layer=None):
    """Returns (output [B, L, D], updated cache layer or None)."""
    d = x_BxLxD.shape[-1]
    dt = layers.dtype_of(self.dtype)
    n, m, h = self.num_heads, self.num_kv_heads, self.head_dim
    wq = layers.param_with_axes(self, "wq", (d, n, h), ("embed", "q_heads", "head_dim"))
    wk = layers.param_with_axes(self, "wk", (d, m, h), ("embed", "kv_heads", "head_dim"))
    wv = layers.param_with_axes(self, "wv", (d, m, h), ("embed", "kv_heads", "head_dim"))
    wo = layers.param_with_axes(self, "wo", (n, h, d), ("q_heads", "head_dim", "embed"),
                                nn.initializers.normal(stddev=(n * h) ** -0.5))
    x = x_BxLxD.astype(dt)
    q_BxLxNxH = jnp.einsum("bld,dnh->blnh", x, wq.astype(dt))
    k_BxLxMxH = jnp.einsum("bld,dmh->blmh", x, wk.astype(dt))
    v_BxLxMxH = jnp.einsum("bld,dmh->blmh", x, wv.astype(dt))
    q_BxLxNxH = layers.rotary(q_BxLxNxH, part.positions_BxL, self.rope_theta)
    k_BxLxMxH = layers.rotary(k_BxLxMxH, part.positions_BxL, self.rope_theta)
    valid_BxL = part.segment_ids_BxL >= 0

    if cache_layer is None:  # self-attention within the part, causal and per segment
      same_seg = part.segment_ids_BxL[:, :, None] == part.segment_ids_BxL[:, None, :]
      causal = part.positions_BxL[:, None, :] <= part.positions_BxL[:, :, None]
      mask_BxLxS = same_seg & causal & valid_BxL[:, None, :]
      out = attend(q_BxLxNxH, k_BxLxMxH, v_BxLxMxH, mask_BxLxS)
    else:
      cache_layer = {
          "k": write_cache(cache_layer["k"], part.slots_B, part.positions_BxL, valid_BxL,
                           k_BxLxMxH),
          "v": write_cache(cache_layer["v"], part.slots_B, part.positions_BxL, valid_BxL,
                           v_BxLxMxH),
      }
      keys_BxSxMxH = layers.constrain(
          cache_layer["k"][part.slots_B], ("decode_batch", "cache_seq", "cache_heads", "cache_kv"))
      vals_BxSxMxH = layers.constrain(
          cache_layer["v"][part.slots_B], ("decode_batch", "cache_seq", "cache_heads", "cache_kv"))
      key_pos_S = jnp.arange(keys_BxSxMxH.shape[1], dtype=jnp.int32)
      mask_BxLxS = key_pos_S[None, None, :] <= part.positions_BxL[:, :, None]
      out = attend(q_BxLxNxH, keys_BxSxMxH, vals_BxSxMxH, mask_BxLxS)
    y_BxLxD = jnp.einsum("blnh,nhd->bld", out.astype(dt), wo.astype(dt))
    return y_BxLxD, cache_layer
