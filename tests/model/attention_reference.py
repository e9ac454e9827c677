"""Independent numpy references of the attention kinds (HF transformers' semantics, written from
its modeling files, not from moe_serve's code): rotary scaling's inverse frequencies, grouped-query
attention with sinks, windows and biases, and DeepSeek's latent attention in its EXPANDED form
(per-head keys [c wk_b | k_rope] and values c wv_b, as HF's DeepseekV3Attention computes them).
Everything in float64 over one row of L tokens at positions 0..L-1.
"""
import math

import numpy as np


def inv_freq(kind, dim, theta, factor=1.0, original=0, low=1.0, high=4.0, beta_fast=32.0,
             beta_slow=1.0, mscale=0.0, mscale_all_dim=0.0, truncate=True):
  """(inverse frequencies [dim / 2], cos/sin factor) of HF's modeling_rope_utils."""
  base = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
  if kind == "default":
    return base, 1.0
  if kind == "linear":
    return base / factor, 1.0
  if kind == "llama3":
    wavelen = 2 * math.pi / base
    out = np.where(wavelen > original / low, base / factor, base)
    smooth = (original / wavelen - low) / (high - low)
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return np.where(medium, (1 - smooth) * out / factor + smooth * out, out), 1.0
  assert kind == "yarn"
  get = lambda s, m: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0
  att = (get(factor, mscale) / get(factor, mscale_all_dim) if mscale and mscale_all_dim
         else get(factor, 1.0))
  corr = lambda rot: dim * math.log(original / (rot * 2 * math.pi)) / (2 * math.log(theta))
  lo, hi = corr(beta_fast), corr(beta_slow)
  if truncate:
    lo, hi = math.floor(lo), math.ceil(hi)
  lo, hi = max(lo, 0), min(hi, dim - 1)
  hi = hi + 0.001 if lo == hi else hi
  ramp = np.clip((np.arange(dim // 2) - lo) / (hi - lo), 0, 1)
  return base / factor * ramp + base * (1 - ramp), att


def rotate(x_LxNxH, freq_h, att=1.0):
  """HF's rotate-half rotary at positions 0..L-1, cos and sin times `att`."""
  ang = np.arange(x_LxNxH.shape[0])[:, None] * freq_h
  cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None] * att
  sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None] * att
  half = x_LxNxH.shape[-1] // 2
  rot = np.concatenate([-x_LxNxH[..., half:], x_LxNxH[..., :half]], -1)
  return x_LxNxH * cos + rot * sin


def rms(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def softmax_attention(q_LxNxH, k_LxNxH, v_LxNxH, scale, window=0, sinks_N=None):
  """Causal (windowed: key > query - window) softmax attention per head, sinks appended to each
  softmax and dropped (gpt-oss). Returns [L, N, Hv]."""
  length = q_LxNxH.shape[0]
  s_NxLxJ = np.einsum("lnh,jnh->nlj", q_LxNxH, k_LxNxH) * scale
  i, j = np.arange(length)[:, None], np.arange(length)[None]
  keep = (j <= i) & ((j > i - window) if window else True)
  s_NxLxJ = np.where(keep, s_NxLxJ, -np.inf)
  if sinks_N is not None:
    s_NxLxJ = np.concatenate([s_NxLxJ, np.broadcast_to(sinks_N[:, None, None],
                                                       s_NxLxJ.shape[:2] + (1,))], -1)
  p = np.exp(s_NxLxJ - s_NxLxJ.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  if sinks_N is not None:
    p = p[..., :-1]
  return np.einsum("nlj,jnh->lnh", p, v_LxNxH)


def gqa(p, x_LxD, num_kv_heads, freq, att, window=0, eps=1e-6):
  """Grouped-query attention of params `p` (numpy, the flax names) over one row."""
  q = np.einsum("ld,dnh->lnh", x_LxD, p["wq"]) + p.get("bq", 0)
  k = np.einsum("ld,dmh->lmh", x_LxD, p["wk"]) + p.get("bk", 0)
  v = np.einsum("ld,dmh->lmh", x_LxD, p["wv"]) + p.get("bv", 0)
  rep = q.shape[1] // num_kv_heads
  k, v = np.repeat(k, rep, 1), np.repeat(v, rep, 1)
  q, k = rotate(q, freq, att), rotate(k, freq, att)
  o = softmax_attention(q, k, v, q.shape[-1] ** -0.5, window, p.get("sinks"))
  return np.einsum("lnh,nhd->ld", o, p["wo"]) + p.get("bo", 0)


def mla_expanded(p, x_LxD, hn, freq, att, scale, window=0, eps=1e-6):
  """DeepSeek latent attention as HF computes it: per-head keys and values expanded from the
  latent. Returns [L, D]."""
  if "wq_a" in p:
    q = np.einsum("lr,rnh->lnh", rms(x_LxD @ p["wq_a"], p["q_norm"]["scale"], eps), p["wq_b"])
  else:
    q = np.einsum("ld,dnh->lnh", x_LxD, p["wq"])
  r = p["wk_b"].shape[0]
  kv = x_LxD @ p["wkv_a"]
  c, k_rope = rms(kv[:, :r], p["kv_norm"]["scale"], eps), kv[:, r:]
  k_nope = np.einsum("lr,rnh->lnh", c, p["wk_b"])
  v = np.einsum("lr,rnh->lnh", c, p["wv_b"])
  n = q.shape[1]
  k_rope = np.repeat(rotate(k_rope[:, None], freq, att), n, 1)
  q = np.concatenate([q[..., :hn], rotate(q[..., hn:], freq, att)], -1)
  k = np.concatenate([k_nope, k_rope], -1)
  o = softmax_attention(q, k, v, scale, window, p.get("sinks"))
  return np.einsum("lnh,nhd->ld", o, p["wo"]) + p.get("bo", 0)
