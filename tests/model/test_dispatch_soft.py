"""Soft MoE against a float64 numpy reference; instances, padding and (non-)causality.

Tolerance: 1e-5 absolute on O(1) float32 outputs (softmaxes and sums in another order).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve import config as config_lib
from moe_serve.model import api, dispatch_soft, experts
from moe_serve.parallel import steps
from tests.helpers.expert_inputs import normal

T, D, E, P, F, G = 10, 8, 3, 2, 6, 4


def _setup(seed=0):
  rng = np.random.default_rng(seed)
  w = experts.ExpertWeights(normal(rng, (E, D, F), D**-0.5), normal(rng, (E, D, F), D**-0.5),
                             normal(rng, (E, F, D), F**-0.5))
  x = normal(rng, (T, D))
  phi = normal(rng, (D, E, P))
  seg = jnp.asarray([0, 0, -1, 1, 1, 1, 2, 2, -1, 3])
  return x, seg, phi, jnp.float32(1.5), w


def _reference(x, seg, phi, scale, w):
  x, phi = np.asarray(x, np.float64), np.asarray(phi, np.float64)
  g, u, dn = (np.asarray(a, np.float64)
               for a in (w.w_gate_ExDxF, w.w_up_ExDxF, w.w_down_ExFxD))
  nx = x / np.sqrt((x * x).sum(-1, keepdims=True) + 1e-6)
  nphi = float(scale) * phi / np.sqrt((phi * phi).sum(0, keepdims=True) + 1e-6)
  out = np.zeros_like(x)
  for start in range(0, T, G):
    idx = [t for t in range(start, min(start + G, T)) if seg[t] >= 0]
    logits = np.einsum("gd,dep->gep", nx[idx], nphi)  # [g, E, P]
    disp = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    slots = np.einsum("gep,gd->epd", disp, x[idx])
    ys = np.zeros_like(slots)
    for e in range(E):
      h = slots[e] @ g[e]
      ys[e] = ((h / (1 + np.exp(-h))) * (slots[e] @ u[e])) @ dn[e]
    comb = np.exp(logits.reshape(len(idx), -1))
    comb /= comb.sum(-1, keepdims=True)
    out[idx] = comb @ ys.reshape(E * P, D)
  return out


def test_soft_moe_matches_the_numpy_reference():
  x, seg, phi, scale, w = _setup()
  y, rec = dispatch_soft.soft_moe(x, seg, phi, scale, w, G)
  np.testing.assert_allclose(np.asarray(y), _reference(x, np.asarray(seg), phi, scale, w),
                             atol=1e-5, rtol=0)
  assert rec.kept.shape == (T, E * P)
  np.testing.assert_array_equal(np.asarray(rec.kept[:, 0]), np.asarray(seg) >= 0)
  np.testing.assert_allclose(np.asarray(rec.combine_weight).sum(1), np.asarray(seg) >= 0,
                             rtol=1e-6)


def test_soft_moe_instances_padding_and_non_causality():
  x, seg, phi, scale, w = _setup()
  f = functools.partial(dispatch_soft.soft_moe, phi_DxExZ=phi, scale=scale, w=w, group_size=G)
  base = np.asarray(f(x, seg)[0])
  # Padding (t=2, t=8) changes nothing and outputs zero.
  np.testing.assert_array_equal(np.asarray(f(x.at[2].set(9.0).at[8].set(-9.0), seg)[0]), base)
  assert np.abs(base[[2, 8]]).max() == 0.0
  # Group 1 (t=4..7) changed: group 0 identical, bitwise.
  changed = np.asarray(f(x.at[5].set(3.0), seg)[0])
  np.testing.assert_array_equal(changed[:4], base[:4])
  # ...but the earlier t=4 of the same group changes: slots mix later tokens in (not causal).
  assert np.abs(changed[4] - base[4]).max() > 1e-4


def test_soft_moe_in_the_model(tiny_cfg):
  m = tiny_cfg.model
  m.router.update(kind="soft", capacity_scope="group", group_size=4, k=2)
  config_lib.validate(tiny_cfg)
  params = steps.make_init_fn(m)(0)
  toks = np.arange(2 * 6).reshape(2, 6) + 3
  logits, aux = jax.jit(functools.partial(api.forward, m, record_routing=True))(params, toks)
  assert np.isfinite(np.asarray(logits)).all()
  assert aux["routing"][0].kept.shape == (12, m.num_experts * 2)
  assert float(aux["lb_loss"]) == 0.0 and float(aux["drop_rate"].max()) == 0.0
  m.router.capacity_scope = "sequence"
  with pytest.raises(config_lib.ConfigError, match="kind='soft'.*'batch' or 'group'"):
    config_lib.validate(tiny_cfg)
