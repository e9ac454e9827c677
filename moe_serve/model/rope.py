"""Rotary scaling (`model.rope_type`): the inverse frequencies and the cos/sin factor of HF
transformers' `modeling_rope_utils` for linear, llama3 and yarn, and YaRN's softmax mscale.

`Rope.of(model_cfg, dim)` is a hashable description of one rotary (a Flax module attribute);
`apply` rotates with it. rope_type "default" runs `layers.rotary` itself, so every earlier model
keeps its bits. The scaled types compute the frequencies once, in float64 on the host, as HF
writes them (HF computes in float32 torch: the two agree to float32 rounding), and rotate the
same halves layout: x1 cos - x2 sin, x2 cos + x1 sin, with cos and sin times yarn's attention
factor (HF multiplies its cos/sin tables by `attention_scaling`).

The yarn factor is model.rope_factor as given: HF derives it from max_position_embeddings /
original_max_position_embeddings only where the checkpoint omits `factor`, and the importer
then writes that ratio into model.rope_factor.

Axis letters (docs/design.md section 2): B rows of a part, L tokens per row, N heads,
H rotary dims (h = H / 2, a rotary half).
"""
import math
from typing import NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from moe_serve.model import layers


def _base_inv_freq(theta, dim):
  """HF's default inverse frequencies, 1 / theta^(2i / dim), i < dim / 2 (float64)."""
  return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def yarn_mscale(scale, mscale=1.0):
  """YaRN's 0.1 * mscale * ln(scale) + 1 (1 for scale <= 1), HF's `yarn_get_mscale`."""
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(m, dim):
  """(inv_freq [dim / 2], attention factor) of HF's `_compute_yarn_parameters`."""
  theta, factor = m.rope_theta, m.rope_factor
  attention_factor = m.rope_attention_factor
  if not attention_factor:
    if m.rope_mscale and m.rope_mscale_all_dim:
      attention_factor = yarn_mscale(factor, m.rope_mscale) / yarn_mscale(factor,
                                                                          m.rope_mscale_all_dim)
    else:
      attention_factor = yarn_mscale(factor)
  beta_fast, beta_slow = m.rope_beta_fast or 32.0, m.rope_beta_slow or 1.0
  original = m.rope_original_max_len

  def correction_dim(rotations):
    return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if m.rope_truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # HF's guard against a zero-width ramp
  ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
  extrapolation = 1 - ramp  # 1: keep the original frequency; 0: divide it by the factor
  base = _base_inv_freq(theta, dim)
  return base / factor * (1 - extrapolation) + base * extrapolation, float(attention_factor)


def _llama3(m, dim):
  """inv_freq [dim / 2] of HF's `_compute_llama3_parameters` (attention factor 1)."""
  base = _base_inv_freq(m.rope_theta, dim)
  factor, low, high = m.rope_factor, m.rope_low_freq_factor, m.rope_high_freq_factor
  old = m.rope_original_max_len
  wavelen = 2 * math.pi / base
  scaled = np.where(wavelen > old / low, base / factor, base)
  smooth = (old / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < old / high) & ~(wavelen > old / low)
  return np.where(medium, smoothed, scaled)


class Rope(NamedTuple):
  """One rotary's parameters: `theta` alone (rope_type default: `layers.rotary`), or the scaled
  inverse frequencies [H / 2] (float32 values) and the factor on cos and sin."""
  theta: float
  inv_freq: Optional[tuple] = None
  attention_factor: float = 1.0

  @classmethod
  def of(cls, m, dim):
    """The rotary of model section `m` over `dim` rotary dims (head_dim, or MLA's
    qk_rope_head_dim)."""
    kind = m.get("rope_type", "default")
    if kind == "default":
      return cls(m.rope_theta)
    if kind == "linear":
      inv, factor = _base_inv_freq(m.rope_theta, dim) / m.rope_factor, 1.0
    elif kind == "llama3":
      inv, factor = _llama3(m, dim), 1.0
    elif kind == "yarn":
      inv, factor = _yarn(m, dim)
    else:
      raise ValueError(f"model.rope_type={kind!r}: expected default, linear, llama3 or yarn")
    return cls(m.rope_theta, tuple(float(f) for f in np.float32(inv)), factor)


def softmax_mscale(m):
  """The factor on the softmax scale of DeepSeek's latent attention, mscale^2 with mscale =
  yarn_mscale(rope_factor, rope_mscale_all_dim) (HF's `yarn_apply_mscale`: any rope_type but
  default, with mscale_all_dim given); 1 otherwise."""
  if m.get("rope_type", "default") == "default" or not m.get("rope_mscale_all_dim", 0):
    return 1.0
  mscale = yarn_mscale(m.rope_factor, m.rope_mscale_all_dim)
  return mscale * mscale


def apply(x_BxLxNxH, pos_BxL, rope: Rope):
  """Rotates pairs (first half, second half) of the last axis by position-dependent angles."""
  if rope.inv_freq is None:
    return layers.rotary(x_BxLxNxH, pos_BxL, rope.theta)
  half = x_BxLxNxH.shape[-1] // 2
  if len(rope.inv_freq) != half:
    raise ValueError(f"rotary of {len(rope.inv_freq)} frequencies applied to {2 * half} dims")
  freq_h = jnp.asarray(rope.inv_freq, jnp.float32)
  angle_BxLxh = pos_BxL.astype(jnp.float32)[..., None] * freq_h
  sin = (jnp.sin(angle_BxLxh) * rope.attention_factor)[..., None, :]
  cos = (jnp.cos(angle_BxLxh) * rope.attention_factor)[..., None, :]
  x1, x2 = x_BxLxNxH[..., :half].astype(jnp.float32), x_BxLxNxH[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)
