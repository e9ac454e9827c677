"""The newer attention options of grouped-query attention: rotary scaling (model.rope_type),
sliding windows, attention sinks and the output bias, against the numpy reference of HF's
semantics (tests/model/attention_reference.py); the batch-invariant reads with sinks, a window
and the latent layout (values = the keys' first dims).

Tolerance: 1e-5 absolute on O(1) outputs, float32 against float64 (rounding only); frequencies
agree to float32 rounding of the same float64 formula (rtol 1e-7).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from moe_serve.model import attend, layers, rope
from moe_serve.model.attention import Attention
from moe_serve.model.parts import Part, full_part
from tests.helpers.expert_inputs import normal
from tests.model import attention_reference as ref


ROPES = {
    "linear": dict(rope_type="linear", rope_factor=2.5),
    "llama3": dict(rope_type="llama3", rope_factor=8.0, rope_original_max_len=64,
                   rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_theta=500.0),
    "yarn": dict(rope_type="yarn", rope_factor=32.0, rope_original_max_len=4096,
                 rope_beta_fast=32.0, rope_beta_slow=1.0),
    "yarn_untruncated": dict(rope_type="yarn", rope_factor=32.0, rope_original_max_len=4096,
                             rope_truncate=False, rope_theta=150000.0),  # gpt-oss
    "yarn_mscale": dict(rope_type="yarn", rope_factor=40.0, rope_original_max_len=4096,
                        rope_mscale=1.0, rope_mscale_all_dim=1.0, rope_beta_fast=32.0,
                        rope_beta_slow=1.0),  # DeepSeek-V3
}


def _model(**options):
  m = base.get_config("size=tiny").model
  m.update(options)
  return m


def _ref_freq(m, dim):
  return ref.inv_freq(m.rope_type, dim, m.rope_theta, m.rope_factor, m.rope_original_max_len,
                      m.rope_low_freq_factor, m.rope_high_freq_factor, m.rope_beta_fast,
                      m.rope_beta_slow, m.rope_mscale, m.rope_mscale_all_dim, m.rope_truncate)


@pytest.mark.parametrize("name", sorted(ROPES))
def test_scaled_rope_frequencies_and_factor_follow_hf(name):
  m = _model(**ROPES[name])
  got = rope.Rope.of(m, 64)
  want_freq, want_factor = _ref_freq(m, 64)
  np.testing.assert_allclose(got.inv_freq, want_freq, rtol=1e-7, atol=0)
  assert got.attention_factor == pytest.approx(want_factor, rel=1e-12)
  base_freq = 1.0 / m.rope_theta ** (np.arange(0, 64, 2) / 64)
  assert not np.allclose(got.inv_freq, base_freq)  # the scaling changed something
  if name.startswith("yarn"):  # 1 only where mscale = mscale_all_dim cancel (DeepSeek-V3)
    assert (name == "yarn_mscale") == (got.attention_factor == 1.0)


def test_default_rope_is_layers_rotary_bit_for_bit():
  x = normal(np.random.default_rng(0), (2, 5, 3, 8))
  pos = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
  spec = rope.Rope.of(_model(), 8)
  assert spec.inv_freq is None
  np.testing.assert_array_equal(rope.apply(x, pos, spec), layers.rotary(x, pos, 10_000.0))


@pytest.mark.parametrize("options,window", [
    (dict(attn_sinks=True, attn_out_bias=True, attn_bias=True, **ROPES["yarn_untruncated"]), 3),
    (dict(ROPES["llama3"]), 0),
])
def test_grouped_query_attention_matches_hf_reference(options, window):
  m = _model(**options)
  rng = np.random.default_rng(0)
  x_BxLxD = jnp.asarray(rng.normal(size=(1, 8, m.d_model)), jnp.float32)
  part = full_part(jnp.zeros((1, 8), jnp.int32))
  module = Attention(m.num_heads, m.num_kv_heads, m.head_dim, m.rope_theta, bias=m.attn_bias,
                     rope=rope.Rope.of(m, m.head_dim), window=window, sinks=m.attn_sinks,
                     out_bias=m.attn_out_bias)
  params = nn.meta.unbox(module.init(jax.random.key(0), [x_BxLxD], [part])["params"])
  params = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) if v.ndim < 3 else v
            for k, v in params.items()}  # biases, sinks: random (init gives zeros)
  (got,), _ = module.apply({"params": params}, [x_BxLxD], [part])
  freq, att = _ref_freq(m, m.head_dim)
  want = ref.gqa(jax.tree.map(lambda a: np.asarray(a, np.float64), params),
                 np.asarray(x_BxLxD[0], np.float64), m.num_kv_heads, freq, att, window)
  np.testing.assert_allclose(np.asarray(got[0]), want, atol=1e-5, rtol=0)


def test_chunked_read_with_sinks_window_and_latent_values_is_invariant_and_matches():
  rng = np.random.default_rng(3)
  s, max_len, n, r, hr = 5, 96, 4, 6, 2
  cache = {"k": jnp.asarray(rng.normal(size=(s, 1, r + hr, max_len)), jnp.float32)}
  sinks_N = jnp.asarray(rng.normal(size=(n,)), jnp.float32)
  opts = dict(scale=0.3, window=37, sinks_N=sinks_N, value_dim=r)
  q_1xLxNxH = jnp.asarray(rng.normal(size=(1, 3, n, r + hr)), jnp.float32)
  target = Part(jnp.zeros((1, 3), jnp.int32), jnp.arange(60, 63, dtype=jnp.int32)[None],
                jnp.zeros((1, 3), jnp.int32), jnp.asarray([2], jnp.int32))
  read = jax.jit(attend.attend_cache_chunked, static_argnames=("kv_len", "scale", "window",
                                                                "value_dim"))
  solo = np.asarray(read(q_1xLxNxH, cache, target, kv_len=64, **opts))[0]
  plain = np.asarray(attend.attend_cache(q_1xLxNxH, cache, target, **opts))[0]
  np.testing.assert_allclose(solo, plain, rtol=1e-5, atol=1e-6)
  # The plain read against numpy: keys 24..p (window 37), values the latent's first r dims.
  k_JxH = np.asarray(cache["k"][2, 0]).T
  for l, p in enumerate(range(60, 63)):
    logits = np.append(k_JxH[p - 36:p + 1] @ np.asarray(q_1xLxNxH[0, l]).T * 0.3,
                       np.asarray(sinks_N)[None], axis=0)
    w = np.exp(logits - logits.max(0))
    w = w / w.sum(0)
    np.testing.assert_allclose(plain[l], (w[:-1].T @ k_JxH[p - 36:p + 1, :r]), atol=1e-5)
  q = jnp.asarray(rng.normal(size=(4, 3, n, r + hr)), jnp.float32).at[1].set(q_1xLxNxH[0])
  others = Part(jnp.zeros((4, 3), jnp.int32),
                jnp.asarray([[5, 6, 7], [60, 61, 62], [0, 1, 2], [90, 91, 92]], jnp.int32),
                jnp.zeros((4, 3), jnp.int32), jnp.asarray([0, 2, 4, 1], jnp.int32))
  out = np.asarray(read(q, cache, others, kv_len=None, **opts))  # every chunk (96)
  np.testing.assert_array_equal(out[1], solo)
