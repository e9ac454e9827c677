"""Random expert weights and tokens for the dispatch tests, and a float64 numpy reference.

Drawn with numpy (no jax op compiles for test data). Sizes: T tokens, D model width, E experts,
F expert width; inputs N(0, 1), weights N(0, 1/fan_in), so outputs are O(1).
"""
import jax.numpy as jnp
import numpy as np

from moe_serve.model import experts

T, D, E, F = 37, 16, 4, 8


def normal(rng, shape, scale=1.0):
  """float32 N(0, scale^2) draws as a jax array."""
  return jnp.asarray(rng.standard_normal(shape) * scale, jnp.float32)


def weights(seed=0):
  rng = np.random.default_rng(seed)
  return experts.ExpertWeights(normal(rng, (E, D, F), D**-0.5), normal(rng, (E, D, F), D**-0.5),
                               normal(rng, (E, F, D), F**-0.5))


def inputs(seed=0):
  """(x [T, D], router logits [T, E], segment ids [T]: 6 requests, some padding)."""
  rng = np.random.default_rng(seed + 10)
  seg_T = np.where(np.arange(T) % 5 == 4, -1, np.arange(T) // 6)
  return normal(rng, (T, D)), normal(rng, (T, E), 2.0), jnp.asarray(seg_T, jnp.int32)


def numpy_reference(x_TxD, index_TxK, weight_TxK, w):
  """float64 numpy: y_t = sum_j weight_tj * SwiGLU_{e_tj}(x_t), independent of the library."""
  x = np.asarray(x_TxD, np.float64)
  g, u, dn = (np.asarray(a, np.float64)
               for a in (w.w_gate_ExDxF, w.w_up_ExDxF, w.w_down_ExFxD))
  out = np.zeros_like(x)
  for t in range(x.shape[0]):
    for e, wt in zip(np.asarray(index_TxK[t]), np.asarray(weight_TxK[t])):
      h = x[t] @ g[e]
      out[t] += wt * ((h / (1 + np.exp(-h))) * (x[t] @ u[e])) @ dn[e]
  return out
