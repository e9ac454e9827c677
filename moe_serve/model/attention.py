"""Rotary grouped-query attention over a step's parts, with or without the slot KV cache.

The reads, the cache layout and the masks are attend.py's (shared with the latent attention of
mla.py); this module projects queries, keys and values, rotates them (rope.py: model.rope_type)
and applies the output projection. Per layer options: a sliding window (model.sliding_window on
the layers `config.architecture.is_sliding_layer` picks), attention sinks (model.attn_sinks: a
param `sinks` [N], float32) and an output bias (model.attn_out_bias: `bo` [D]).

Axis letters (docs/design.md section 2): B rows of the part, L tokens per row (query positions),
D model, N query heads, M KV heads, H head dim, S cache slots, J key positions.
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from moe_serve.model import invariant, layers
from moe_serve.model import rope as rope_lib
from moe_serve.model.attend import attend_parts
from moe_serve.model.parts import Part


def _across_heads(norm):
  """`norm` (an RMSNorm) applied over the concatenated heads (N*H values per token)."""
  def apply(x_BxLxNxH):
    b, length, n, h = x_BxLxNxH.shape
    return norm(x_BxLxNxH.reshape(b, length, n * h)).reshape(b, length, n, h)
  return apply


class Attention(nn.Module):
  """Rotary grouped-query self-attention of a step's parts, reading and writing the slot KV cache.

  Every part writes its keys and values before any part reads (attend.attend_parts).
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
  rope: Optional[rope_lib.Rope] = None  # rotary scaling (model.rope_type); None: rope_theta
  window: int = 0  # sliding window (model.sliding_window on this layer); 0: none
  sinks: bool = False  # model.attn_sinks
  out_bias: bool = False  # model.attn_out_bias

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
    sinks_N = bias_o = None
    if self.sinks:  # gpt-oss: one logit per query head in every softmax
      sinks_N = layers.param_with_axes(self, "sinks", (n,), ("q_heads",), nn.initializers.zeros)
    if self.out_bias:
      bias_o = layers.param_with_axes(self, "bo", (d,), ("embed",), nn.initializers.zeros)
    rope = self.rope or rope_lib.Rope(self.rope_theta)
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
      q_BxLxNxH = rope_lib.apply(q_BxLxNxH, part.positions_BxL, rope)
      k_BxLxMxH = rope_lib.apply(k_BxLxMxH, part.positions_BxL, rope)
      return q_BxLxNxH, k_BxLxMxH, v_BxLxMxH

    live = [i for i, x in enumerate(xs_BxLxD) if x.shape[0] * x.shape[1]]
    qkv = {}
    for i in live:
      q_BxLxNxH, k_BxLxMxH, v_BxLxMxH = project(xs_BxLxD[i], parts[i])
      qkv[i] = (q_BxLxNxH, {"k": k_BxLxMxH, "v": v_BxLxMxH})
    outs, cache_layer = attend_parts(qkv, parts, cache_layer, kv_len, self.invariant,
                                     window=self.window, sinks_N=sinks_N)
    ys = [invariant.matmul(outs[i].astype(dt), wo.astype(dt), self.invariant, axes=2)
          if i in outs else jnp.zeros_like(x) for i, x in enumerate(xs_BxLxD)]
    if self.out_bias:
      ys = [y + bias_o.astype(dt) if i in outs else y for i, y in enumerate(ys)]
    return ys, cache_layer
