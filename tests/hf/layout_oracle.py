"""A float32 numpy forward pass over IMPORTED parameters (moe_serve's names and layouts, the
model section's options), for the newer HF families: what the importer promises the model.

tests/hf/test_import_layout.py runs it on the parameters hf/weights.py reads and compares with
transformers' logits, so the importer's layouts (de-interleaved rotary columns, the kv_b split,
gpt-oss's even/odd gate/up, dequantised FP8 and MXFP4) and the config mapping (rope scaling,
windows, router options) are checked without the JAX model. Rotary dims are in the halves
layout; latent norms use eps 1e-6 (transformers' DeepSeek fixes it; the fixtures'
rms_norm_eps is 1e-6 too).

Axis letters: T tokens, D model width, N heads, H head width, E experts.
"""
import math

import jax
import numpy as np

from moe_serve.model.transformer import is_moe_layer


def _f32(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def rms(x, w, eps):
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def silu(x):
  return x / (1 + np.exp(-x))


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _mscale(factor, m):
  return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def rope_tables(m, dim):
  """(inverse frequencies, cos/sin factor, extra softmax factor) from the model section."""
  inv = 1.0 / m.rope_theta ** (np.arange(0, dim, 2) / dim)
  if m.rope_type == "default":
    return inv, 1.0, 1.0
  f = m.rope_factor
  if m.rope_type == "linear":
    return inv / f, 1.0, 1.0
  orig = m.rope_original_max_len
  if m.rope_type == "llama3":
    lo, hi = m.rope_low_freq_factor, m.rope_high_freq_factor
    wl = 2 * math.pi / inv
    out = np.where(wl > orig / lo, inv / f, inv)
    smooth = (orig / wl - lo) / (hi - lo)
    mid = ~(wl < orig / hi) & ~(wl > orig / lo)
    return np.where(mid, (1 - smooth) * out / f + smooth * out, out), 1.0, 1.0
  att = m.rope_attention_factor or (
      _mscale(f, m.rope_mscale) / _mscale(f, m.rope_mscale_all_dim)
      if m.rope_mscale and m.rope_mscale_all_dim else _mscale(f, 1.0))
  corr = lambda rot: dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(m.rope_theta))
  low, high = corr(m.rope_beta_fast), corr(m.rope_beta_slow)
  if m.rope_truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  ramp = np.clip((np.arange(dim // 2) - low) / ((high - low) or 0.001), 0, 1)
  softmax_factor = _mscale(f, m.rope_mscale_all_dim) ** 2 if m.rope_mscale_all_dim else 1.0
  return inv / f * ramp + inv * (1 - ramp), att, softmax_factor


def rotate(x_TxNxH, m, pos):
  inv, att, _ = rope_tables(m, x_TxNxH.shape[-1])
  ang = pos[:, None] * inv[None]
  cos, sin = (np.cos(ang) * att)[:, None], (np.sin(ang) * att)[:, None]
  half = x_TxNxH.shape[-1] // 2
  a, b = x_TxNxH[..., :half], x_TxNxH[..., half:]
  return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def attend(q, k, v, scale, window=0, sinks=None):
  T = q.shape[0]
  i, j = np.arange(T)[:, None], np.arange(T)[None]
  ok = (j <= i) & ((j > i - window) if window else True)
  s = np.einsum("tnh,snh->nts", q, k) * scale + np.where(ok, 0.0, -np.inf)
  if sinks is not None:
    s = np.concatenate([s, np.broadcast_to(sinks[:, None, None], (s.shape[0], T, 1))], -1)
  p = softmax(s)
  return np.einsum("nts,snh->tnh", p[..., :T], v)


def attention(m, a, x, pos, layer):
  if m.attention == "mla":
    hn = m.qk_nope_head_dim
    q = np.einsum("tr,rnh->tnh", rms(x @ a["wq_a"], a["q_norm"]["scale"], 1e-6), a["wq_b"]) \
        if m.q_lora_rank else np.einsum("td,dnh->tnh", x, a["wq"])
    ckv = x @ a["wkv_a"]
    lat = rms(ckv[:, :m.kv_lora_rank], a["kv_norm"]["scale"], 1e-6)
    k_rot = rotate(ckv[:, None, m.kv_lora_rank:], m, pos)
    k = np.concatenate([np.einsum("tr,rnh->tnh", lat, a["wk_b"]),
                        np.repeat(k_rot, m.num_heads, 1)], -1)
    q = np.concatenate([q[..., :hn], rotate(q[..., hn:], m, pos)], -1)
    v = np.einsum("tr,rnh->tnh", lat, a["wv_b"])
    scale = (hn + m.qk_rope_head_dim) ** -0.5 * rope_tables(m, m.qk_rope_head_dim)[2]
    return np.einsum("tnh,nhd->td", attend(q, k, v, scale), a["wo"])
  q, k, v = (np.einsum("td,dnh->tnh", x, a[f"w{n}"]) + (a[f"b{n}"] if m.attn_bias else 0)
             for n in "qkv")
  q, k = rotate(q, m, pos), rotate(k, m, pos)
  g = m.num_heads // m.num_kv_heads
  k, v = np.repeat(k, g, 1), np.repeat(v, g, 1)
  window = m.sliding_window if (m.sliding_window and (
      not m.layer_types or m.layer_types[layer] == "sliding")) else 0
  out = attend(q, k, v, m.head_dim ** -0.5, window, a["sinks"] if m.attn_sinks else None)
  return np.einsum("tnh,nhd->td", out, a["wo"]) + (a["bo"] if m.attn_out_bias else 0)


def moe(m, p, x):
  r = m.router
  logits = x @ p["w_router"] + (p["b_router"] if r.bias else 0)
  scores = sigmoid(logits) if r.score == "sigmoid" else softmax(logits)
  choice = scores + (p["e_score_bias"] if r.selection_bias else 0)
  E, G = m.num_experts, r.expert_groups
  if G > 1:
    grouped = choice.reshape(-1, G, E // G)
    gs = np.sort(grouped, -1)[..., -2:].sum(-1) if r.group_score == "top2_sum" else grouped.max(-1)
    keep = np.zeros_like(gs, bool)
    np.put_along_axis(keep, np.argsort(-gs, -1)[:, :r.topk_groups], True, -1)
    choice = np.where(np.repeat(keep, E // G, -1), choice, -np.inf)
  top = np.argsort(-choice, -1)[:, :r.k]
  w = np.take_along_axis(scores, top, -1)
  if r.renormalize:
    w = w / w.sum(-1, keepdims=True)
  w = w * r.scale
  ex = p["experts"]
  out = np.zeros_like(x)
  for t in range(x.shape[0]):
    for j in range(r.k):
      e = top[t, j]
      g = x[t] @ ex["w_gate"][e] + (ex["b_gate"][e] if m.expert_bias else 0)
      u = x[t] @ ex["w_up"][e] + (ex["b_up"][e] if m.expert_bias else 0)
      if m.expert_act == "clamped":
        g, u = np.minimum(g, m.swiglu_limit), np.clip(u, -m.swiglu_limit, m.swiglu_limit)
        h = g * sigmoid(m.swiglu_alpha * g) * (u + 1)
      else:
        h = silu(g) * u
      out[t] += w[t, j] * (h @ ex["w_down"][e] + (ex["b_down"][e] if m.expert_bias else 0))
  if m.shared_expert:
    s = p["shared_expert"]
    out += (silu(x @ s["w_gate"]) * (x @ s["w_up"])) @ s["w_down"]
  return out


def forward(m, params, ids):
  """Logits [T, V] of token ids under model section `m` and imported `params`."""
  params = _f32(params)
  pos = np.arange(len(ids), dtype=np.float64)
  x = params["embedding"][np.asarray(ids)]
  for i in range(m.num_layers):
    b = params[f"block_{i}"]
    x = x + attention(m, b["attn"], rms(x, b["norm_attn"]["scale"], m.norm_eps), pos, i)
    h = rms(x, b["norm_ffn"]["scale"], m.norm_eps)
    if is_moe_layer(m, i):
      x = x + moe(m, b["moe"], h)
    else:
      d = b["mlp"]
      x = x + (silu(h @ d["w_gate"]) * (h @ d["w_up"])) @ d["w_down"]
  x = rms(x, params["final_norm"]["scale"], m.norm_eps)
  return x @ (params["embedding"].T if m.tie_embeddings else params["unembed"])
