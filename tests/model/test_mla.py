"""Latent attention (model.attention="mla"): the absorbed form against HF's expanded form (numpy,
tests/model/attention_reference.py), its latent cache, cached decode against the full forward
with a sliding window and sinks (grouped-query attention too), and batch-invariant bits.

Tolerance: 1e-5 absolute on O(1) outputs, float32 against a float64 reference: the absorbed form
multiplies q_nope by wk_b before the keys (HF: the latent by wk_b), the same products summed in
another order, so only float32 rounding separates them; a wrong head, split, scale or mask moves
outputs by O(0.1).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from moe_serve.model import api, parts, rope
from moe_serve.model.mla import LatentAttention
from moe_serve.model.parts import full_part
from moe_serve.parallel import steps
from tests.model import attention_reference as ref
from tests.tolerances import LOGITS_ATOL

MLA = dict(attention="mla", kv_lora_rank=12, qk_nope_head_dim=6, qk_rope_head_dim=4,
           v_head_dim=5, num_heads=4, num_kv_heads=4)
YARN = dict(rope_type="yarn", rope_factor=4.0, rope_original_max_len=32, rope_mscale=0.8,
            rope_mscale_all_dim=0.7)


def _model(**options):
  m = base.get_config("size=tiny").model
  m.update(MLA)
  m.update(options)
  return m


def _init(m):
  return steps.make_init_fn(m)(0)


def _forward(m, params, toks):
  """The full forward's logits [B, L, V] (jitted: eager op-by-op runs slower than a compile)."""
  return np.asarray(jax.jit(lambda p, t: api.forward(m, p, t)[0])(params, toks))


def _randomise(params, rng):
  """Random norm scales, sinks and output bias (init leaves them at 1 or 0)."""
  def one(path, x):
    name = jax.tree_util.keystr(path)
    if any(s in name for s in ("scale", "sinks", "'bo'")):
      return jnp.asarray(rng.normal(size=x.shape) * 0.5 + (1.0 if "scale" in name else 0.0),
                         x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(one, params)


@pytest.mark.parametrize("options", [
    dict(q_lora_rank=8, **YARN),
    dict(q_lora_rank=0, attn_sinks=True, attn_out_bias=True, rope_type="default"),
])
def test_absorbed_latent_attention_matches_hf_expanded_form(options):
  m = _model(**options)
  m.norm_eps = 1e-2  # the latent norms keep HF's 1e-6 whatever rms_norm_eps says (mla.py)
  window = 3 if options.get("attn_sinks") else 0
  rng = np.random.default_rng(0)
  x_BxLxD = jnp.asarray(rng.normal(size=(2, 9, m.d_model)), jnp.float32)
  seg = np.zeros((2, 9), np.int32)
  seg[1, 6:] = -1  # row 1: 6 tokens, then padding
  part = full_part(jnp.zeros((2, 9), jnp.int32), jnp.asarray(seg))
  module = LatentAttention(m, window)
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), [x_BxLxD], [part])["params"])
  params = _randomise(params, rng)
  (got,), cache = jax.jit(module.apply)({"params": params}, [x_BxLxD], [part])
  assert cache is None
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  freq, att = ref.inv_freq(m.rope_type, m.qk_rope_head_dim, m.rope_theta, m.rope_factor,
                           m.rope_original_max_len, mscale=m.rope_mscale,
                           mscale_all_dim=m.rope_mscale_all_dim)
  mscale = 0.1 * 0.7 * np.log(4.0) + 1 if m.rope_type == "yarn" else 1.0  # HF yarn_get_mscale
  scale = (m.qk_nope_head_dim + m.qk_rope_head_dim) ** -0.5 * mscale**2
  for row, length in ((0, 9), (1, 6)):
    x = np.asarray(x_BxLxD[row, :length], np.float64)
    want = ref.mla_expanded(p, x, m.qk_nope_head_dim, freq, att, scale, window, eps=1e-6)
    np.testing.assert_allclose(np.asarray(got[row, :length]), want, atol=1e-5, rtol=0)
  assert rope.softmax_mscale(m) == pytest.approx(mscale**2, rel=1e-12)


def test_latent_cache_holds_latent_and_rotary_key_only():
  m = _model(q_lora_rank=8, max_len=64, num_layers=2)
  cache = steps.make_cache_fn(m)(3)
  r_hr = m.kv_lora_rank + m.qk_rope_head_dim
  for layer in cache["layers"]:
    assert set(layer) == {"k"} and layer["k"].shape == (3, 1, r_hr, m.max_len)
  latent = sum(a.nbytes for layer in cache["layers"] for a in layer.values())
  # The GQA expansion HF's cache would hold: keys N x (Hn + Hr) and values N x Hv per token.
  expanded = (3 * m.max_len * m.num_layers * 4 *
              m.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim))
  assert latent == 3 * m.max_len * m.num_layers * 4 * r_hr
  assert expanded / latent == 60 / 16  # values per token per layer: 4 * (6 + 4 + 5) against 16


def _run_steps(m, params, toks, slots, prefill, num_slots=3, kv_len=None, idle_rows=0):
  """Prefills toks[:, :prefill] into `slots`, then decodes the rest one token per step (plus
  `idle_rows` padding decode rows); returns logits [B, L, V] and the decode logits per step."""
  step = jax.jit(lambda p, c, b: api.step(m, p, c, b, kv_len=kv_len)[:2])
  cache = steps.make_cache_fn(m)(num_slots)
  b = len(slots)
  batch = parts.StepBatch(parts.decode_part(np.zeros(b), slots, np.zeros(b), -np.ones(b)),
                          parts.chunk_part(toks[:, :prefill], slots, np.zeros(b),
                                           np.full(b, prefill), np.arange(b)))
  logits, cache = step(params, cache, batch)
  got = [np.asarray(logits["prefill"])]
  pad = lambda a, v: np.concatenate([a, np.full(idle_rows, v)])
  for t in range(prefill, toks.shape[1]):
    batch = parts.StepBatch(
        parts.decode_part(pad(toks[:, t], 0), pad(slots, 0), pad(np.full(b, t), 0),
                          pad(np.arange(b), -1)), parts.empty_part(0, 4))
    logits, cache = step(params, cache, batch)
    got.append(np.asarray(logits["decode"])[:b, None])
  return np.concatenate(got, 1)


# One dense layer (first_dense): the attention is under test, the MoE has its own tests.
SMALL = dict(num_layers=1, first_dense=1, max_len=64, vocab_size=64, sliding_window=4,
             attn_sinks=True)


def test_cached_decode_matches_full_forward_with_window_and_sinks_gqa():
  m = base.get_config("size=tiny").model
  m.update(SMALL, attn_out_bias=True)
  rng = np.random.default_rng(1)
  params = _randomise(_init(m), rng)
  toks = np.asarray(rng.integers(3, m.vocab_size, (2, 10)), np.int32)
  full = _forward(m, params, toks)
  got = _run_steps(m, params, toks, np.array([2, 0]), prefill=6)  # the window slides on
  np.testing.assert_allclose(got, full, atol=LOGITS_ATOL, rtol=0)
  # The Block passes the options on: sinks and bias are params, and the window (4) bites only
  # from position 4 on.
  assert {"sinks", "bo"} <= set(params["block_0"]["attn"])
  unwindowed = m.copy_and_resolve_references()
  unwindowed.sliding_window = 0
  everything = _forward(unwindowed, params, toks)
  np.testing.assert_allclose(everything[:, :4], full[:, :4], atol=LOGITS_ATOL, rtol=0)
  assert np.abs(everything[:, 4:] - full[:, 4:]).max() > 1e-2


def test_latent_decode_matches_forward_and_invariant_bits_ignore_step_shape_and_kv_len():
  """Batch-invariant mode: cached decode (prefill 5, then one token per step; the window of 4
  slides on) equals the full forward, and a row's bits are the same alone (one row, kv bucket 32)
  and in a crowd (second of three rows plus idle ones, slot order, kv bucket 64)."""
  m = _model(q_lora_rank=8, batch_invariant=True, attn_out_bias=True, **SMALL, **YARN)
  rng = np.random.default_rng(2)
  params = _randomise(_init(m), rng)
  toks = np.asarray(rng.integers(3, m.vocab_size, (3, 9)), np.int32)
  alone = _run_steps(m, params, toks[:1], np.array([1]), prefill=5, num_slots=4, kv_len=32)
  plain = m.copy_and_resolve_references()
  plain.batch_invariant = False  # the forward in the default mode: fewer loops to compile
  np.testing.assert_allclose(alone, _forward(plain, params, toks[:1]), atol=LOGITS_ATOL, rtol=0)
  crowd = _run_steps(m, params, toks[[1, 0, 2]], np.array([3, 1, 0]), prefill=5, num_slots=4,
                     kv_len=64, idle_rows=2)
  np.testing.assert_array_equal(crowd[1], alone[0])
