"""The decoder's cache contract (docs/design.md section 4, contract 1), causality, slot isolation.

Tolerance: float32 logits agree to 1e-5 absolute. The cached path attends over the whole slot
row (max_len keys, masked) while the full forward attends over L keys, so the softmax sums are
reduced in a different order; exact zeros from masked keys keep the difference at rounding level.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.model import api, parts
from moe_serve.parallel import compiles, steps
from tests.tolerances import LOGITS_ATOL


def _setup(cfg, seed=0):
  params = steps.make_init_fn(cfg.model)(seed)
  toks = np.asarray(jax.random.randint(jax.random.key(seed + 1), (2, 12), 3, cfg.model.vocab_size))
  return params, toks


def _prefill_chunks(model_cfg, step, params, cache, toks_BxL, chunk, slots):
  """Prefills each row of toks into its slot in chunks; returns logits [B, L, V] and the cache."""
  b, length = toks_BxL.shape
  idle = parts.decode_part(np.zeros(b), slots, np.zeros(b), -np.ones(b))
  out = []
  for start in range(0, length, chunk):
    piece = toks_BxL[:, start:start + chunk]
    n = piece.shape[1]
    padded = np.zeros((b, chunk), np.int32)
    padded[:, :n] = piece
    batch = parts.StepBatch(idle, parts.chunk_part(padded, slots, np.full(b, start),
                                                   np.full(b, n), np.arange(b)))
    logits, cache, _ = step(params, cache, batch)
    out.append(np.asarray(logits["prefill"])[:, :n])
  return np.concatenate(out, 1), cache


# Router configs for which contract 1 holds exactly (tests/model/test_moe.py and docs/routing.md
# explain the others): dropless (einsum by default, ragged, sorted; gather runs in the sequence variant)
# and the hash router; `sequence` scope with a factor of E/k, where no instance can drop (a
# decode step's one-token instances never drop).
ROUTER_VARIANTS = {
    "none_ragged": dict(capacity_scope="none", dispatch="ragged"),
    "none_sorted": dict(capacity_scope="none", dispatch="sorted"),
    "hash_none": dict(kind="hash", capacity_scope="none"),
    "sequence_token_factor_E_over_k": dict(capacity_scope="sequence", priority="token",
                                           dispatch="gather", capacity_factor_prefill=2.0),
}


@pytest.mark.parametrize("variant", ["default", "moe_every2_shared_untied", *ROUTER_VARIANTS])
def test_token_by_token_decode_matches_full_forward(tiny_cfg, variant):
  if variant == "moe_every2_shared_untied":
    tiny_cfg.model.update(moe_every=2, shared_expert=True, tie_embeddings=False)
  tiny_cfg.model.router.update(ROUTER_VARIANTS.get(variant, {}))
  m = tiny_cfg.model
  params, toks = _setup(tiny_cfg)
  full, _ = steps.make_forward_fn(m)(params, toks)
  step = steps.make_step_fn(m)
  cache = steps.make_cache_fn(m)(2)
  slots = np.array([1, 0])  # rows deliberately not in slot order
  got = []
  for t in range(toks.shape[1]):
    batch = parts.StepBatch(parts.decode_part(toks[:, t], slots, np.full(2, t), np.arange(2)),
                            parts.empty_part(0, 4))
    logits, cache, _ = step(params, cache, batch)
    got.append(np.asarray(logits["decode"]))
  np.testing.assert_allclose(np.stack(got, 1), full, atol=LOGITS_ATOL, rtol=0)
  np.testing.assert_array_equal(np.asarray(cache["lengths"]), [12, 12])


@pytest.mark.parametrize("chunk", [1, 3, 5, 12, 16])
def test_chunked_prefill_matches_single_shot(tiny_cfg, chunk):
  m = tiny_cfg.model
  params, toks = _setup(tiny_cfg, seed=3)
  step = steps.make_step_fn(m)
  slots = np.array([0, 2])
  single, _ = _prefill_chunks(m, step, params, steps.make_cache_fn(m)(3), toks, 12, slots)
  chunked, cache = _prefill_chunks(m, step, params, steps.make_cache_fn(m)(3), toks, chunk, slots)
  full, _ = steps.make_forward_fn(m)(params, toks)
  np.testing.assert_allclose(chunked, single, atol=LOGITS_ATOL, rtol=0)
  np.testing.assert_allclose(single, full, atol=LOGITS_ATOL, rtol=0)
  np.testing.assert_array_equal(np.asarray(cache["lengths"]), [12, 0, 12])


# Causal routers: `sequence` scope with `token` priority is causal even while it drops tokens
# (factor 0.5); `batch` with `token` is causal only in flat step order, which puts a later
# position of row 0 before earlier positions of row 1, so it is not listed.
@pytest.mark.parametrize("router", [{}, dict(capacity_scope="sequence", priority="token",
                                             capacity_factor_prefill=0.5)])
def test_changing_a_later_token_never_changes_earlier_logits(tiny_cfg, router):
  tiny_cfg.model.router.update(router)
  m = tiny_cfg.model
  params, toks = _setup(tiny_cfg, seed=5)
  forward = steps.make_forward_fn(m)  # jitted: one compile, not one per op
  base_logits, _ = forward(params, toks)
  for t in (0, 5, 11):
    changed = toks.copy()
    changed[:, t] = (changed[:, t] + 7) % m.vocab_size
    logits, _ = forward(params, changed)
    np.testing.assert_array_equal(np.asarray(logits[:, :t]), np.asarray(base_logits[:, :t]))
    assert not np.array_equal(np.asarray(logits[:, t]), np.asarray(base_logits[:, t]))


def test_writing_or_resetting_another_slot_never_changes_a_slot(tiny_cfg):
  m = tiny_cfg.model
  params, toks = _setup(tiny_cfg, seed=7)
  step = steps.make_step_fn(m)
  slots = np.array([0, 1])
  _, cache = _prefill_chunks(m, step, params, steps.make_cache_fn(m)(3), toks[:, :8], 4, slots)

  def next_logits(cache, slot0_token):
    """Decodes slot 0 at position 8; slot 2 gets a new request in the same step."""
    batch = parts.StepBatch(
        parts.decode_part([slot0_token, 0], [0, 1], [8, 0], [0, -1]),
        parts.chunk_part(toks[1:, :4], [2], [0], [4], [9]))
    logits, _, _ = step(params, jax.tree.map(jnp.copy, cache), batch)
    return np.asarray(logits["decode"][0])

  reference = next_logits(cache, toks[0, 8])
  # Slot 1 rewritten by another request, then slot 2 reset: slot 0 is untouched.
  _, other = _prefill_chunks(m, step, params, jax.tree.map(jnp.copy, cache),
                             (toks[::-1, :8] + 1) % m.vocab_size, 8, np.array([2, 1]))
  np.testing.assert_array_equal(next_logits(other, toks[0, 8]), reference)
  np.testing.assert_array_equal(next_logits(api.reset_slot(other, 1), toks[0, 8]), reference)
  # A stale, longer request previously in slot 0 must not leak into a new shorter one there.
  fresh, _ = _prefill_chunks(m, step, params, steps.make_cache_fn(m)(3), toks[:1, :5], 5,
                             np.array([0]))
  reused, _ = _prefill_chunks(m, step, params, jax.tree.map(jnp.copy, cache), toks[:1, :5], 5,
                              np.array([0]))
  np.testing.assert_array_equal(reused, fresh)


def test_zero_row_parts(tiny_cfg):
  m = tiny_cfg.model
  params, toks = _setup(tiny_cfg)
  step = steps.make_step_fn(m)
  only_prefill = parts.StepBatch(parts.empty_part(0, 1),
                                 parts.chunk_part(toks[:, :4], [0, 1], [0, 0], [4, 4], [0, 1]))
  logits, cache, _ = step(params, steps.make_cache_fn(m)(2), only_prefill)
  assert logits["decode"].shape == (0, m.vocab_size)
  only_decode = parts.StepBatch(parts.decode_part(toks[:, 4], [0, 1], [4, 4], [0, 1]),
                                parts.empty_part(0, 4))
  logits, cache, aux = step(params, cache, only_decode)
  assert logits["prefill"].shape == (0, 4, m.vocab_size)
  assert np.isfinite(np.asarray(logits["decode"])).all()
  assert np.isfinite(float(aux["lb_loss"]))


def test_repeated_steps_of_one_bucket_compile_once(tiny_cfg):
  m = tiny_cfg.model
  params, toks = _setup(tiny_cfg)
  step = steps.make_step_fn(m)
  cache = steps.make_cache_fn(m)(2)  # committed, as the step returns it

  def run(t):
    batch = parts.StepBatch(parts.decode_part(toks[:, t], [0, 1], [t, t], [0, 1]),
                            parts.chunk_part(toks[:, :4], [0, 1], [0, 0], [t % 4 + 1] * 2, [2, 3]))
    return step(params, cache, batch)[1]

  cache = run(0)  # warm-up compiles
  with compiles.count_compiles() as n:
    for t in range(1, 6):
      cache = run(t)
    jax.block_until_ready(cache)
    assert n() == 0
  with compiles.count_compiles() as n:  # the counter does see a new shape bucket
    batch = parts.StepBatch(parts.decode_part(toks[:, 0], [0, 1], [0, 0], [0, 1]),
                            parts.empty_part(0, 4))
    step(params, cache, batch)
    assert n() >= 1


def test_a_program_from_the_persistent_compilation_cache_counts_as_a_compile():
  """tests/conftest.py sets JAX_COMPILATION_CACHE_DIR: of two functions with one program, the
  second loads the first's from the cache, and the counter sees both."""
  assert os.environ.get("JAX_COMPILATION_CACHE_DIR")
  hits = []
  jax.monitoring.register_event_listener(
      lambda event, **_: hits.append(event) if event.endswith("/cache_hits") else None)
  x = np.random.default_rng().standard_normal(7).astype(np.float32)  # a program no test has
  salt = float(np.random.default_rng().integers(1 << 20))
  with compiles.count_compiles() as n:
    jax.jit(lambda v: jnp.sin(v) * salt)(x)
    jax.jit(lambda v: jnp.sin(v) * salt)(x)  # another function: misses jit's in-memory cache
  assert len(hits) == 1 and n() == 2


def test_step_rows_must_each_hold_one_request():
  ok = parts.StepBatch(parts.decode_part([5, 6], [0, 1], [3, 3], [0, -1]),
                       parts.chunk_part(np.ones((2, 4)), [2, 3], [0, 0], [4, 2], [7, 8]))
  parts.check_one_request_per_row(ok)
  shared = parts.StepBatch(ok.decode, parts.chunk_part(np.ones((2, 4)), [2, 3], [0, 0], [4, 2],
                                                       [0, 8]))
  with pytest.raises(ValueError, match=r"requests \[0\] have more than one row"):
    parts.check_one_request_per_row(shared)
  packed = ok.prefill._replace(segment_ids_BxL=np.asarray([[7, 7, 9, 9], [8, 8, -1, -1]]))
  with pytest.raises(ValueError, match="prefill row 0 holds more than one request"):
    parts.check_one_request_per_row(ok._replace(prefill=packed))


@pytest.mark.parametrize("kind", ["topk", "soft"])
def test_count_params_active_counts_k_of_e_experts(tiny_cfg, kind):
  m = tiny_cfg.model
  m.router.kind = kind
  params = steps.make_init_fn(m)(0)
  total, active = api.count_params(m, params)
  assert total == sum(x.size for x in jax.tree.leaves(params))
  per_layer = [sum(x.size for x in jax.tree.leaves(params[f"block_{i}"]["moe"]["experts"]))
               for i in range(m.num_layers) if (i + 1) % m.moe_every == 0]
  assert per_layer and all(n > 0 for n in per_layer)
  inactive = sum(n * (m.num_experts - m.router.k) // m.num_experts for n in per_layer)
  assert active == (total if kind == "soft" else total - inactive)
