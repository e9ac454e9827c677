"""Multi-head latent attention (model.attention="mla": DeepSeek-V2/V3, Kimi K2, Moonlight), served
in the absorbed form: the cache holds per token only the normalised latent and the rotated
rotary key, never per-head keys or values.

HF's DeepseekV3Attention (V2 the same, with its rotary always interleaved) computes, per head n:
  q = x wq (or, with q_lora_rank, q_norm(x wq_a) wq_b), split [q_nope Hn | q_rope Hr]
  [c | k_rope] = x wkv_a, c = kv_norm(c) (the latent), k_rope one rotary key shared by the heads
  k_n = [c wk_b[:, n] | rope(k_rope)],  v_n = c wv_b[:, n]
  out = softmax(q_n . k_n * scale) v_n, then wo; scale = (Hn + Hr)^-0.5 * mscale^2
(mscale = yarn_mscale(rope_factor, rope_mscale_all_dim) when given: rope.softmax_mscale).
Since q_nope . (c wk_b[:, n]) = (q_nope wk_b[:, n]^T) . c, the query is absorbed into latent
space, q_lat = q_nope wk_b^T [Hc], and the scores are q_lat . c + q_rope . k_rope: MQA with one
key head [c | k_rope] of width Hc + Hr whose first Hc dims are also its values, so
out_n = (probs . c) wv_b[:, n]. attend.py runs that with value_dim = Hc; the cache layer is
{"k": [S, 1, Hc+Hr, J]} (attend.LATENT_CACHE_AXES). The no-cache forward uses the same form.

Rotary slices use the halves layout of `layers.rotary` (DeepSeek checkpoints interleave them; the
importer permutes the weight columns, exact since q . k is invariant under one permutation of
both). Parameters: wq_a [D, Hq], q_norm scale [Hq], wq_b [Hq, N, Hn+Hr] (or wq [D, N, Hn+Hr]),
wkv_a [D, Hc+Hr], kv_norm scale [Hc], wk_b [Hc, N, Hn], wv_b [Hc, N, Hv], wo [N, Hv, D]; bo [D]
(attn_out_bias) and sinks [N] (attn_sinks) as in attention.py.

Axis letters (docs/design.md section 2): B rows of the part, L tokens per row, D model, N query
heads, Hq query latent width (q_lora_rank), Hc kv latent width (kv_lora_rank), Hn / Hr / Hv the
non-rotary, rotary and value head dims, Hk = Hc + Hr the key width, H = Hn + Hr a query head,
T flat rows (B * L), S cache slots, J key positions.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from moe_serve.model import attend, invariant, layers
from moe_serve.model import rope as rope_lib
from moe_serve.model.parts import Part


def _per_head(x_BxLxNxA, w, spec, invariant_mode):
  """einsum `spec` ("tn?,???->tn?") of every token's heads with a per-head weight; with
  `invariant_mode` on fixed row tiles (invariant.row_tiled) so a row's bits ignore the rows."""
  b, length, n = x_BxLxNxA.shape[:3]
  x_TxNxA = x_BxLxNxA.reshape((b * length, n) + x_BxLxNxA.shape[3:])
  fn = lambda x, w: jnp.einsum(spec, x, w)
  y_TxNxC = invariant.row_tiled(fn, x_TxNxA, w) if invariant_mode else fn(x_TxNxA, w)
  return y_TxNxC.reshape((b, length, n) + y_TxNxC.shape[2:])


# The latent RMSNorms' epsilon: DeepSeek's reference code and transformers build q_a_layernorm and
# kv_a_layernorm with their default 1e-6 whatever rms_norm_eps says (Moonlight's says 1e-5; with
# it a reduced Moonlight's logits differ from transformers' by 1.04e-4, with 1e-6 by 3.6e-6).
LATENT_NORM_EPS = 1e-6


class LatentAttention(nn.Module):
  """DeepSeek's latent attention of a step's parts over the latent slot cache (module docstring).
  `window` > 0: this layer attends within that many positions (model.sliding_window)."""
  cfg: "ml_collections.ConfigDict"  # the model section  # noqa: F821
  window: int = 0

  @nn.compact
  def __call__(self, xs_BxLxD, parts: Sequence[Part], cache_layer=None, kv_len=None):
    """Returns (outputs [B, L, D] per part, zeros for a part without tokens; updated cache
    layer or None), as attention.Attention."""
    m = self.cfg
    inv = m.get("batch_invariant", False)
    d = xs_BxLxD[0].shape[-1]
    dt = layers.dtype_of(m.dtype)
    n, rq, r = m.num_heads, m.q_lora_rank, m.kv_lora_rank
    hn, hr, hv = m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    normal = lambda fan_in: nn.initializers.normal(stddev=fan_in**-0.5)
    param = lambda name, shape, axes, init: layers.param_with_axes(self, name, shape, axes, init)
    if rq:
      wq_a = param("wq_a", (d, rq), ("embed", "q_lora"), normal(d))
      q_norm = layers.RMSNorm(LATENT_NORM_EPS, inv, name="q_norm")
      wq_b = param("wq_b", (rq, n, hn + hr), ("q_lora", "q_heads", "head_dim"), normal(rq))
    else:
      wq = param("wq", (d, n, hn + hr), ("embed", "q_heads", "head_dim"), normal(d))
    wkv_a = param("wkv_a", (d, r + hr), ("embed", "kv_lora"), normal(d))
    kv_norm = layers.RMSNorm(LATENT_NORM_EPS, inv, name="kv_norm")
    wk_b = param("wk_b", (r, n, hn), ("kv_lora", "q_heads", "head_dim"), normal(r))
    wv_b = param("wv_b", (r, n, hv), ("kv_lora", "q_heads", "head_dim"), normal(r))
    wo = param("wo", (n, hv, d), ("q_heads", "head_dim", "embed"), normal(n * hv))
    sinks_N = bias_o = None
    if m.get("attn_sinks", False):
      sinks_N = param("sinks", (n,), ("q_heads",), nn.initializers.zeros)
    if m.get("attn_out_bias", False):
      bias_o = param("bo", (d,), ("embed",), nn.initializers.zeros)
    rope = rope_lib.Rope.of(m, hr)
    scale = (hn + hr) ** -0.5 * rope_lib.softmax_mscale(m)
    mm = lambda x, w: invariant.matmul(x, w.astype(dt), inv)

    def project(x_BxLxD, part):
      """(absorbed queries [B, L, N, Hc+Hr], the latent cache entries {"k": [B, L, 1, Hc+Hr]})."""
      x = x_BxLxD.astype(dt)
      q_BxLxNxH = mm(q_norm(mm(x, wq_a)), wq_b) if rq else mm(x, wq)
      kv_BxLxHk = mm(x, wkv_a)
      c_BxLxHc = kv_norm(kv_BxLxHk[..., :r])
      k_rope_BxLx1xHr = rope_lib.apply(kv_BxLxHk[:, :, None, r:], part.positions_BxL, rope)
      q_rope_BxLxNxHr = rope_lib.apply(q_BxLxNxH[..., hn:], part.positions_BxL, rope)
      q_lat_BxLxNxHc = _per_head(q_BxLxNxH[..., :hn], wk_b.astype(dt), "tnh,rnh->tnr", inv)
      query = jnp.concatenate([q_lat_BxLxNxHc, q_rope_BxLxNxHr.astype(q_lat_BxLxNxHc.dtype)], -1)
      key = jnp.concatenate([c_BxLxHc[:, :, None], k_rope_BxLx1xHr.astype(c_BxLxHc.dtype)], -1)
      return query, {"k": key}

    live = [i for i, x in enumerate(xs_BxLxD) if x.shape[0] * x.shape[1]]
    qkv = {i: project(xs_BxLxD[i], parts[i]) for i in live}
    outs, cache_layer = attend.attend_parts(qkv, parts, cache_layer, kv_len, inv, scale=scale,
                                            window=self.window, sinks_N=sinks_N, value_dim=r)
    ys = []
    for i, x in enumerate(xs_BxLxD):
      if i not in outs:
        ys.append(jnp.zeros_like(x))
        continue
      o_BxLxNxHv = _per_head(outs[i].astype(dt), wv_b.astype(dt), "tnr,rnh->tnh", inv)
      y_BxLxD = invariant.matmul(o_BxLxNxHv, wo.astype(dt), inv, axes=2)
      ys.append(y_BxLxD if bias_o is None else y_BxLxD + bias_o.astype(dt))
    return ys, cache_layer
