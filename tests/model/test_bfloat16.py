"""model.dtype=bfloat16 (allowed by the config): the forward pass and the engine step run, logits
are finite and close to float32's, the KV cache is bfloat16, and cached decode matches the full
forward (contract 1) within bfloat16's tolerance. Tolerances: tests/tolerances.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.model import parts
from moe_serve.parallel import steps
from tests.tolerances import BF16_CACHE_ATOL, BF16_VS_F32_REL


@pytest.fixture(scope="module")
def setup():
  from configs import base  # pylint: disable=import-outside-toplevel
  f32 = base.get_config("size=tiny").model
  bf16 = f32.copy_and_resolve_references()
  bf16.dtype = "bfloat16"
  params = steps.make_init_fn(f32)(0)  # float32 parameters either way
  toks_BxL = np.asarray(jax.random.randint(jax.random.key(1), (2, 12), 3, f32.vocab_size))
  return f32, bf16, params, toks_BxL


def test_bf16_forward_is_finite_and_close_to_float32(setup):
  f32, bf16, params, toks_BxL = setup
  want_BxLxV, _ = steps.make_forward_fn(f32)(params, toks_BxL)
  got_BxLxV, _ = steps.make_forward_fn(bf16)(params, toks_BxL)
  want_BxLxV, got_BxLxV = np.asarray(want_BxLxV), np.asarray(got_BxLxV, np.float32)
  assert np.isfinite(got_BxLxV).all()
  err = np.abs(got_BxLxV - want_BxLxV).max()
  assert err <= BF16_VS_F32_REL * np.abs(want_BxLxV).max(), err
  assert err > 0  # bfloat16 is really used: float32 compute would match to ~1e-6


def test_bf16_cached_decode_matches_full_forward(setup):
  _, bf16, params, toks_BxL = setup
  full_BxLxV, _ = steps.make_forward_fn(bf16)(params, toks_BxL)
  step = steps.make_step_fn(bf16)
  cache = steps.make_cache_fn(bf16)(2)
  assert cache["layers"][0]["k"].dtype == jnp.bfloat16
  slots_B = np.array([1, 0])  # rows deliberately not in slot order
  got = []
  for t in range(toks_BxL.shape[1]):
    batch = parts.StepBatch(parts.decode_part(toks_BxL[:, t], slots_B, np.full(2, t),
                                              np.arange(2)), parts.empty_part(0, 4))
    logits, cache, _ = step(params, cache, batch)
    got.append(np.asarray(logits["decode"], np.float32))
  got_BxLxV = np.stack(got, 1)
  assert np.isfinite(got_BxLxV).all()
  np.testing.assert_allclose(got_BxLxV, np.asarray(full_BxLxV, np.float32), atol=BF16_CACHE_ATOL,
                             rtol=0)
