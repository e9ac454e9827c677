"""Small layers: RMSNorm, rotary embeddings, a logically-partitioned kernel, the SwiGLU FFN.

Axis letters: one meaning each across the model and metrics (docs/design.md section 2 has the
whole table); each module lists the ones it uses. Here: B rows of a part, L tokens per row,
D model, N query heads, H head dim (h = H / 2, a rotary half), F FFN hidden, T flat tokens;
`x_xD` means any leading axes, then D.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_serve.model import invariant


def dtype_of(name):
  """The jnp dtype a config names (`model.dtype`: float32 or bfloat16)."""
  return jnp.dtype(name)


def param_with_axes(module, name, shape, axes: Sequence[str | None], init=None):
  """Declares a parameter whose dimensions carry logical axis names (for sharding rules)."""
  if init is None:
    fan_in = shape[-2] if len(shape) >= 2 else shape[-1]
    init = nn.initializers.normal(stddev=fan_in**-0.5)
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), shape, jnp.float32)


def constrain(x, axes):
  """Logical sharding constraint; a no-op outside a mesh/rules context."""
  return nn.with_logical_constraint(x, tuple(axes))


def logical_axis_size(name):
  """How many shards the logical axis `name` has in the current trace context: the product of
  the sizes of the mesh axes the rules map it to (1 outside a mesh, or when unmapped)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1
  target = dict(nn.get_logical_axis_rules()).get(name)
  names = (target,) if isinstance(target, str) else tuple(target or ())
  sizes = dict(mesh.shape)
  return math.prod(sizes.get(n, 1) for n in names)


class RMSNorm(nn.Module):
  """Root-mean-square normalisation over the last axis (in float32) with a learned scale;
  `invariant` (model.batch_invariant): on fixed row tiles, so the mean's reduction has one shape
  whatever the number of rows (invariant.py)."""
  eps: float = 1e-6
  invariant: bool = False

  @nn.compact
  def __call__(self, x_xD):
    scale_D = param_with_axes(self, "scale", (x_xD.shape[-1],), ("norm",), nn.initializers.ones)

    def norm(x_TxD, scale_D):
      x32 = x_TxD.astype(jnp.float32)
      inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
      return (x32 * inv * scale_D).astype(x_TxD.dtype)

    if not self.invariant:
      return norm(x_xD, scale_D)
    d = x_xD.shape[-1]
    return invariant.row_tiled(norm, x_xD.reshape(-1, d), scale_D).reshape(x_xD.shape)


def rotary(x_BxLxNxH, pos_BxL, theta):
  """Rotates pairs (first half, second half) of the head dim by position-dependent angles."""
  half = x_BxLxNxH.shape[-1] // 2
  freq_h = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BxLxh = pos_BxL.astype(jnp.float32)[..., None] * freq_h
  sin, cos = jnp.sin(angle_BxLxh)[..., None, :], jnp.cos(angle_BxLxh)[..., None, :]
  x1, x2 = x_BxLxNxH[..., :half].astype(jnp.float32), x_BxLxNxH[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)


class SwiGLU(nn.Module):
  """Dense gated FFN: (silu(x W_gate) * x W_up) W_down; `invariant` (model.batch_invariant):
  on fixed row tiles (invariant.py)."""
  d_ff: int
  dtype: str = "float32"
  invariant: bool = False

  @nn.compact
  def __call__(self, x_TxD):
    d = x_TxD.shape[-1]
    dt = dtype_of(self.dtype)
    w_gate_DxF = param_with_axes(self, "w_gate", (d, self.d_ff), ("embed", "mlp"))
    w_up_DxF = param_with_axes(self, "w_up", (d, self.d_ff), ("embed", "mlp"))
    w_down_FxD = param_with_axes(self, "w_down", (self.d_ff, d), ("mlp", "embed"))
    ffn = lambda x, w_gate_DxF, w_up_DxF, w_down_FxD: (
        nn.silu(x @ w_gate_DxF) * (x @ w_up_DxF)) @ w_down_FxD
    args = [a.astype(dt) for a in (x_TxD, w_gate_DxF, w_up_DxF, w_down_FxD)]
    return invariant.row_tiled(ffn, *args) if self.invariant else ffn(*args)
