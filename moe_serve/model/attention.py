"""Rotary grouped-query attention over a part, with or without the slot KV cache.

With a cache, a part first writes its real tokens' keys/values into its slot rows (padding is
dropped), then every query attends to its slot's row at key positions <= its own. A request's
positions 0..p are all written by that request before it reads them, so whatever an earlier
occupant left in the slot past p is masked out: slots leak nothing.

Axis letters (docs/design.md section 2): B rows of the part, L tokens per row (query positions),
D model, N query heads, M KV heads, Q = N / M query heads per KV head, H head dim, S cache slots,
J key positions (a cache row's first `kv_len` positions, or L without a cache).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_serve.model import layers
from moe_serve.model.parts import Part

_MASKED = -1e30  # finite, so fully masked (padding) rows give a uniform softmax, not NaN


def init_cache_layer(num_slots, max_len, num_kv_heads, head_dim, dtype=jnp.float32):
  """One layer's zeroed KV cache: {"k", "v": [S, J, M, H]} with J = max_len."""
  shape = (num_slots, max_len, num_kv_heads, head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def write_cache(cache_SxJxMxH, slots_B, positions_BxL, valid_BxL, new_BxLxMxH):
  """Scatters new keys or values into (slot, position); invalid tokens are dropped."""
  max_len = cache_SxJxMxH.shape[1]
  pos = jnp.where(valid_BxL, positions_BxL, max_len)  # out of range -> dropped
  rows = jnp.broadcast_to(slots_B[:, None], pos.shape)
  return cache_SxJxMxH.at[rows, pos].set(new_BxLxMxH.astype(cache_SxJxMxH.dtype), mode="drop")


def attend(q_BxLxNxH, k_BxJxMxH, v_BxJxMxH, mask_BxLxJ):
  """Grouped-query softmax attention in float32: query l of row b attends key j where
  mask_BxLxJ[b, l, j]. Returns [B, L, N, H]."""
  b, length, n, h = q_BxLxNxH.shape
  m = k_BxJxMxH.shape[2]
  q_BxLxMxQxH = q_BxLxNxH.reshape(b, length, m, n // m, h).astype(jnp.float32)
  logits_BxMxQxLxJ = jnp.einsum("blmqh,bjmh->bmqlj", q_BxLxMxQxH, k_BxJxMxH.astype(jnp.float32))
  logits_BxMxQxLxJ *= h**-0.5
  logits_BxMxQxLxJ = jnp.where(mask_BxLxJ[:, None, None], logits_BxMxQxLxJ, _MASKED)
  probs_BxMxQxLxJ = jax.nn.softmax(logits_BxMxQxLxJ, axis=-1)
  out_BxLxMxQxH = jnp.einsum("bmqlj,bjmh->blmqh", probs_BxMxQxLxJ, v_BxJxMxH.astype(jnp.float32))
  return out_BxLxMxQxH.reshape(b, length, n, h)


def _norm_across_heads(module, name, x_BxLxNxH):
  """RMSNorm over the concatenated heads (N*H values per token), reshaped back."""
  b, length, n, h = x_BxLxNxH.shape
  x_BxLxNH = layers.RMSNorm(module.norm_eps, name=name)(x_BxLxNxH.reshape(b, length, n * h))
  return x_BxLxNH.reshape(b, length, n, h)


class Attention(nn.Module):
  """Rotary grouped-query self-attention of one part, reading and writing the slot KV cache."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  dtype: str = "float32"
  bias: bool = False  # q/k/v projection bias (Qwen2-MoE)
  qk_norm: str = "none"  # RMSNorm on q and k before rotary: none | head (over H) | full (N*H)
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x_BxLxD, part: Part, cache_layer=None, kv_len=None):
    """Returns (output [B, L, D], updated cache layer or None). `kv_len` (static, default the
    cache's max_len): read only the first kv_len positions of each row, which must hold every
    position a query of this part attends (the engine picks it from its kv-length buckets)."""
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
    if self.bias:
      zeros = nn.initializers.zeros
      q_BxLxNxH += layers.param_with_axes(self, "bq", (n, h), ("q_heads", "head_dim"),
                                          zeros).astype(dt)
      k_BxLxMxH += layers.param_with_axes(self, "bk", (m, h), ("kv_heads", "head_dim"),
                                          zeros).astype(dt)
      v_BxLxMxH += layers.param_with_axes(self, "bv", (m, h), ("kv_heads", "head_dim"),
                                          zeros).astype(dt)
    if self.qk_norm == "head":  # one scale [H] shared by the heads (Qwen3-MoE)
      q_BxLxNxH = layers.RMSNorm(self.norm_eps, name="q_norm")(q_BxLxNxH)
      k_BxLxMxH = layers.RMSNorm(self.norm_eps, name="k_norm")(k_BxLxMxH)
    elif self.qk_norm == "full":  # over all heads at once, scales [N*H] and [M*H] (OLMoE)
      q_BxLxNxH = _norm_across_heads(self, "q_norm", q_BxLxNxH)
      k_BxLxMxH = _norm_across_heads(self, "k_norm", k_BxLxMxH)
    q_BxLxNxH = layers.rotary(q_BxLxNxH, part.positions_BxL, self.rope_theta)
    k_BxLxMxH = layers.rotary(k_BxLxMxH, part.positions_BxL, self.rope_theta)
    valid_BxL = part.segment_ids_BxL >= 0

    if cache_layer is None:  # self-attention within the part, causal and per segment
      same_seg = part.segment_ids_BxL[:, :, None] == part.segment_ids_BxL[:, None, :]
      causal = part.positions_BxL[:, None, :] <= part.positions_BxL[:, :, None]
      mask_BxLxJ = same_seg & causal & valid_BxL[:, None, :]  # J = L: the part's own keys
      out_BxLxNxH = attend(q_BxLxNxH, k_BxLxMxH, v_BxLxMxH, mask_BxLxJ)
    else:
      cache_layer = {
          "k": write_cache(cache_layer["k"], part.slots_B, part.positions_BxL, valid_BxL,
                           k_BxLxMxH),
          "v": write_cache(cache_layer["v"], part.slots_B, part.positions_BxL, valid_BxL,
                           v_BxLxMxH),
      }
      # Masked keys weigh exactly 0, so fewer of them (a shorter kv_len) changes no output bit
      # on the backends we test (tests/serving/test_engine.py compares kv buckets bitwise).
      read = lambda c: layers.constrain(c[:, :kv_len][part.slots_B],
                                        ("decode_batch", "cache_seq", "cache_heads", "cache_kv"))
      keys_BxJxMxH, vals_BxJxMxH = read(cache_layer["k"]), read(cache_layer["v"])
      key_pos_J = jnp.arange(keys_BxJxMxH.shape[1], dtype=jnp.int32)
      mask_BxLxJ = key_pos_J[None, None, :] <= part.positions_BxL[:, :, None]
      out_BxLxNxH = attend(q_BxLxNxH, keys_BxJxMxH, vals_BxJxMxH, mask_BxLxJ)
    y_BxLxD = jnp.einsum("blnh,nhd->bld", out_BxLxNxH.astype(dt), wo.astype(dt))
    return y_BxLxD, cache_layer
