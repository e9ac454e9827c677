"""Decoder-only MoE transformer over a list of parts (see parts.py).

Each block runs attention per part (each part its own way: within itself, or against the slot
cache), then concatenates every part's tokens into one flat token set `[T, D]` for the FFN/MoE
(in `parts.FlatOrder`: decode rows first): this is where the tokens of different requests meet
and may compete for expert capacity.

Axis letters: B rows of a part, L tokens per row, D model width, T flat tokens, V vocabulary.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from moe_serve.config.architecture import is_sliding_layer
from moe_serve.model import invariant as invariant_lib
from moe_serve.model import layers
from moe_serve.model import rope as rope_lib
from moe_serve.model.attention import Attention
from moe_serve.model.mla import LatentAttention
from moe_serve.model.moe import MoE
from moe_serve.model.parts import FlatOrder, Part


def is_moe_layer(model_cfg, i):
  """Whether layer `i` (from 0) has an MoE FFN: every `moe_every`-th layer from layer
  `first_dense` on (the layers below it are dense: DeepSeek's first_k_dense_replace)."""
  return i >= model_cfg.get("first_dense", 0) and (i + 1) % model_cfg.moe_every == 0


def num_moe_layers(model_cfg):
  """How many of the layers have an MoE FFN (`is_moe_layer`)."""
  return sum(is_moe_layer(model_cfg, i) for i in range(model_cfg.num_layers))


class Block(nn.Module):
  """One pre-norm layer: attention per part (grouped-query, or latent with model.attention="mla";
  windowed on sliding layers), then the FFN or MoE on the flat token set."""
  cfg: "ml_collections.ConfigDict"  # the model section  # noqa: F821
  use_moe: bool
  layer: int = 0  # this layer's index (sliding or full attention: model.layer_types)

  @nn.compact
  def __call__(self, xs, parts: Sequence[Part], cache_layer, num_decode_parts=0,
               record_routing=False, rows_are_requests=False, kv_len=None,
               forced_TxK=None):
    m = self.cfg
    invariant = m.get("batch_invariant", False)
    window = m.sliding_window if is_sliding_layer(m, self.layer) else 0
    if m.get("attention", "gqa") == "mla":
      attn = LatentAttention(m, window, name="attn")
    else:
      rope = rope_lib.Rope.of(m, m.head_dim)
      attn = Attention(m.num_heads, m.num_kv_heads, m.head_dim, m.rope_theta, m.dtype,
                       m.attn_bias, m.qk_norm, m.norm_eps, invariant, rope, window,
                       m.get("attn_sinks", False), m.get("attn_out_bias", False), name="attn")
    norm_attn = layers.RMSNorm(m.norm_eps, invariant, name="norm_attn")
    ys, cache_layer = attn([norm_attn(x) for x in xs], parts, cache_layer, kv_len)
    new_xs = [x + y for x, y in zip(xs, ys)]
    order = FlatOrder.of(new_xs)  # [B, L, D] per part -> [T, D]
    x_TxD, seg_T = order.flatten(new_xs), order.flatten([p.segment_ids_BxL for p in parts])
    x_TxD = layers.constrain(x_TxD, ("activation_tokens", "activation_embed"))
    h_TxD = layers.RMSNorm(m.norm_eps, invariant, name="norm_ffn")(x_TxD)
    if self.use_moe:
      # Decode tokens lead the flat set; the MoE gives them capacity_factor_decode.
      num_decode = order.start(num_decode_parts)
      token_ids_T = None
      if m.router.kind == "hash":
        token_ids_T = order.flatten([p.tokens_BxL for p in parts])
      row_shapes = order.row_shapes if rows_are_requests else None
      y_TxD = MoE(m, name="moe")(h_TxD, seg_T, num_decode, token_ids_T, record_routing,
                                 row_shapes, forced_TxK)
    else:
      y_TxD = layers.SwiGLU(m.d_ff, m.dtype, invariant, name="mlp")(h_TxD)
    return order.unflatten(x_TxD + y_TxD), cache_layer


class Decoder(nn.Module):
  """(parts, cache or None) -> (logits per part [B_i, L_i, V] float32, cache or None).

  The first `num_decode_parts` parts are decode rows (capacity_factor_decode); with
  `record_routing` every MoE layer sows its Routing into the "routing" collection.
  `rows_are_requests` promises that every row holds at most one request (segment id) and a
  request at most one row, as in an engine step (not a packed training batch): `sequence`
  scope then sizes its expert buffers per row (routing.buffer_capacity). `kv_len` (static):
  the cache positions attention reads (Attention). `forced_TxYxK`: routing
  replay codes per flat token and MoE layer (routing.py), None = route freely.
  """
  cfg: "ml_collections.ConfigDict"  # the model section  # noqa: F821

  @nn.compact
  def __call__(self, parts: Sequence[Part], cache=None, num_decode_parts=0,
               record_routing=False, rows_are_requests=False, kv_len=None,
               forced_TxYxK=None):
    m = self.cfg
    embedding_VxD = layers.param_with_axes(self, "embedding", (m.vocab_size, m.d_model),
                                           ("vocab", "embed"), nn.initializers.normal(1.0))
    dt = layers.dtype_of(m.dtype)
    xs = [jnp.take(embedding_VxD, jnp.asarray(p.tokens_BxL), axis=0).astype(dt) for p in parts]
    xs = [layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
          for x in xs]
    new_layers, moe_layer = [], 0
    for i in range(m.num_layers):
      cache_layer = None if cache is None else cache["layers"][i]
      forced_TxK = None
      if forced_TxYxK is not None and is_moe_layer(m, i):
        forced_TxK, moe_layer = forced_TxYxK[:, moe_layer], moe_layer + 1
      xs, cache_layer = Block(m, is_moe_layer(m, i), i, name=f"block_{i}")(
          xs, parts, cache_layer, num_decode_parts, record_routing, rows_are_requests, kv_len,
          forced_TxK)
      new_layers.append(cache_layer)
    invariant = m.get("batch_invariant", False)
    final_norm = layers.RMSNorm(m.norm_eps, invariant, name="final_norm")
    if m.tie_embeddings:
      unembed_DxV = embedding_VxD.T * (m.d_model**-0.5 if m.tied_logit_scale else 1.0)
    else:
      unembed_DxV = layers.param_with_axes(self, "unembed", (m.d_model, m.vocab_size),
                                           ("embed", "vocab"))
    logits = [invariant_lib.matmul(final_norm(x).astype(jnp.float32), unembed_DxV, invariant)
              for x in xs]
    if cache is not None:
      cache = dict(cache, layers=new_layers)
    return logits, cache
