"""The independent float32 numpy forward pass of the newer HF fixtures (DeepSeek-V2/V3 with
latent attention, gpt-oss), written from the transformers 5 modeling files, for
scripts/make_hf_fixtures.py (which checks it against HF's logits within 1e-4).

c: config.json as a dict; W: tensor name -> float32 array (quantised tensors already
dequantised); returns logits [T, vocab_size].
"""
import math

import numpy as np


def rms(x, w, eps):
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def silu(x):
  return x / (1 + np.exp(-x))


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _mscale(factor, m=1.0):
  return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def rope_parameters(c):
  """HF's rope parameters: rope_scaling (legacy) replaces rope_parameters; `type` -> rope_type."""
  p = dict(c.get("rope_scaling") or c.get("rope_parameters") or {})
  p.setdefault("rope_type", p.get("type", "default"))
  p.setdefault("rope_theta", c.get("rope_theta", 10000.0))
  return p


def inv_freq_and_factor(c, dim):
  """(inverse frequencies [dim/2], attention factor) of HF's default / linear / llama3 / yarn."""
  p = rope_parameters(c)
  base, kind = p["rope_theta"], p["rope_type"]
  inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
  if kind == "default":
    return inv, 1.0
  factor = p["factor"]
  if kind == "linear":
    return inv / factor, 1.0
  orig = p.get("original_max_position_embeddings", c["max_position_embeddings"])
  if kind == "llama3":
    lo, hi = p["low_freq_factor"], p["high_freq_factor"]
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > orig / lo, inv / factor, inv)
    smooth = (orig / wavelen - lo) / (hi - lo)
    mid = ~(wavelen < orig / hi) & ~(wavelen > orig / lo)
    return np.where(mid, (1 - smooth) * out / factor + smooth * out, out), 1.0
  assert kind == "yarn", kind
  mscale, mscale_all = p.get("mscale"), p.get("mscale_all_dim")
  att = p.get("attention_factor")
  if att is None:
    att = (_mscale(factor, mscale) / _mscale(factor, mscale_all) if mscale and mscale_all
           else _mscale(factor))
  beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

  def corr(rot):
    return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

  low, high = corr(beta_fast), corr(beta_slow)
  if p.get("truncate", True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
  extra = 1 - ramp
  return inv / factor * (1 - extra) + inv * extra, float(att)


def rotate(x, inv, att, pos, interleaved):
  """x [T, heads, dim] rotated: pairs (i, i + dim/2) (halves) or (2i, 2i + 1) (interleaved);
  cos and sin times the attention factor, as HF does."""
  ang = pos[:, None] * inv[None]
  cos, sin = (np.cos(ang) * att)[:, None], (np.sin(ang) * att)[:, None]
  if interleaved:
    a, b = x[..., 0::2], x[..., 1::2]
  else:
    a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
  return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def _attend(q, k, v, scale, window=None, sinks=None):
  """q [T, N, H], k [T, N, H], v [T, N, Hv] -> [T, N * Hv]; causal, optional window and sinks."""
  T = q.shape[0]
  i, j = np.arange(T)[:, None], np.arange(T)[None]
  allowed = j <= i
  if window:
    allowed &= j > i - window
  s = np.einsum("thd,shd->hts", q, k) * scale + np.where(allowed, 0.0, -np.inf)
  if sinks is not None:
    s = np.concatenate([s, np.broadcast_to(sinks[:, None, None], (s.shape[0], T, 1))], -1)
  p = softmax(s)
  if sinks is not None:
    p = p[..., :-1]
  return np.einsum("hts,shd->thd", p, v).reshape(T, -1)


def mla(fam, c, W, a, x, pos):
  """DeepSeek multi-head latent attention of the normed x [T, D]."""
  N, T = c["num_attention_heads"], x.shape[0]
  hn, hr, hv, r = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
  if c.get("q_lora_rank"):
    q = rms(x @ W[a + "q_a_proj.weight"].T, W[a + "q_a_layernorm.weight"], 1e-6)
    q = q @ W[a + "q_b_proj.weight"].T
  else:
    q = x @ W[a + "q_proj.weight"].T
  q = q.reshape(T, N, hn + hr)
  ckv = x @ W[a + "kv_a_proj_with_mqa.weight"].T
  kv = rms(ckv[:, :r], W[a + "kv_a_layernorm.weight"], 1e-6)  # HF's default eps for these two
  k_rot = ckv[:, None, r:]
  inv, att = inv_freq_and_factor(c, hr)
  interleaved = fam == "deepseek_v2" or c.get("rope_interleave", True)
  q_rot, k_rot = rotate(q[..., hn:], inv, att, pos, interleaved), rotate(k_rot, inv, att, pos,
                                                                          interleaved)
  kvb = (kv @ W[a + "kv_b_proj.weight"].T).reshape(T, N, hn + hv)
  k = np.concatenate([kvb[..., :hn], np.repeat(k_rot, N, 1)], -1)
  q = np.concatenate([q[..., :hn], q_rot], -1)
  scale = (hn + hr) ** -0.5
  p = rope_parameters(c)
  if p["rope_type"] != "default" and p.get("mscale_all_dim"):
    scale *= _mscale(p["factor"], p["mscale_all_dim"]) ** 2
  return _attend(q, k, kvb[..., hn:], scale) @ W[a + "o_proj.weight"].T


def deepseek_moe(fam, c, W, m, x):
  """The routed experts plus the shared ones of the normed x [T, D]."""
  E, k = c["n_routed_experts"], c["num_experts_per_tok"]
  logits = x @ W[m + "gate.weight"].T
  groups, top_groups = c.get("n_group") or 1, c.get("topk_group") or 1
  if fam == "deepseek_v3":
    scores = sigmoid(logits)
    choice = scores + W[m + "gate.e_score_correction_bias"]
    gscore = np.sort(choice.reshape(-1, groups, E // groups), -1)[..., -2:].sum(-1)
    fill = -np.inf
  else:
    scores = choice = softmax(logits)
    gscore = choice.reshape(-1, groups, E // groups).max(-1)
    fill = 0.0
  if fam == "deepseek_v3" or c.get("topk_method") == "group_limited_greedy":
    keep = np.argsort(-gscore, -1)[:, :top_groups]
    gmask = np.zeros_like(gscore, bool)
    np.put_along_axis(gmask, keep, True, -1)
    choice = np.where(np.repeat(gmask, E // groups, -1), choice, fill)
  top = np.argsort(-choice, -1)[:, :k]
  weight = np.take_along_axis(scores, top, -1)
  if fam == "deepseek_v3" and c.get("norm_topk_prob"):
    weight = weight / (weight.sum(-1, keepdims=True) + 1e-20)
  weight = weight * c["routed_scaling_factor"]
  out = np.zeros_like(x)
  for t in range(x.shape[0]):
    for j in range(k):
      e = f"{m}experts.{top[t, j]}."
      h = silu(x[t] @ W[e + "gate_proj.weight"].T) * (x[t] @ W[e + "up_proj.weight"].T)
      out[t] += weight[t, j] * (h @ W[e + "down_proj.weight"].T)
  return out + mlp(W, m + "shared_experts.", x)


def mlp(W, p, x):
  return (silu(x @ W[p + "gate_proj.weight"].T) * (x @ W[p + "up_proj.weight"].T)) @ W[
      p + "down_proj.weight"].T


def gpt_oss_attention(c, W, a, x, pos, layer):
  N, KV, hd, T = (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], x.shape[0])
  q, k, v = [x @ W[a + n + "_proj.weight"].T + W[a + n + "_proj.bias"] for n in "qkv"]
  q, k, v = q.reshape(T, N, hd), k.reshape(T, KV, hd), v.reshape(T, KV, hd)
  inv, att = inv_freq_and_factor(c, hd)
  q, k = rotate(q, inv, att, pos, False), rotate(k, inv, att, pos, False)
  k, v = np.repeat(k, N // KV, 1), np.repeat(v, N // KV, 1)
  window = c["sliding_window"] if c["layer_types"][layer] == "sliding_attention" else None
  out = _attend(q, k, v, hd ** -0.5, window, W[a + "sinks"])
  return out @ W[a + "o_proj.weight"].T + W[a + "o_proj.bias"]


def gpt_oss_moe(c, W, m, x):
  k, limit, alpha = c["num_experts_per_tok"], c["swiglu_limit"], c.get("swiglu_alpha", 1.702)
  logits = x @ W[m + "router.weight"].T + W[m + "router.bias"]
  top = np.argsort(-logits, -1)[:, :k]
  weight = softmax(np.take_along_axis(logits, top, -1))  # softmax over the chosen k only
  e = m + "experts."
  out = np.zeros_like(x)
  for t in range(x.shape[0]):
    for j in range(k):
      i = top[t, j]
      gu = x[t] @ W[e + "gate_up_proj"][i] + W[e + "gate_up_proj_bias"][i]
      gate, up = np.minimum(gu[0::2], limit), np.clip(gu[1::2], -limit, limit)
      h = (up + 1) * gate * sigmoid(alpha * gate)
      out[t] += weight[t, j] * (h @ W[e + "down_proj"][i] + W[e + "down_proj_bias"][i])
  return out


def forward(fam, c, W, ids):
  """Logits [T, vocab] of a DeepSeek-V2/V3 or gpt-oss fixture."""
  eps, T = c["rms_norm_eps"], len(ids)
  pos = np.arange(T, dtype=np.float64)
  x = W["model.embed_tokens.weight"][ids]
  for layer in range(c["num_hidden_layers"]):
    p = f"model.layers.{layer}."
    xn = rms(x, W[p + "input_layernorm.weight"], eps)
    if fam == "gpt_oss":
      x = x + gpt_oss_attention(c, W, p + "self_attn.", xn, pos, layer)
    else:
      x = x + mla(fam, c, W, p + "self_attn.", xn, pos)
    xn = rms(x, W[p + "post_attention_layernorm.weight"], eps)
    if fam == "gpt_oss":
      x = x + gpt_oss_moe(c, W, p + "mlp.", xn)
    elif layer < c["first_k_dense_replace"]:
      x = x + mlp(W, p + "mlp.", xn)
    else:
      x = x + deepseek_moe(fam, c, W, p + "mlp.", xn)
  x = rms(x, W["model.norm.weight"], eps)
  return (x @ W["lm_head.weight"].T).astype(np.float32)
