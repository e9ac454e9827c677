"""The MoE layer inside the decoder: backends, routing records, aux, capacity factors per part,
and which cache/forward and batch-invariance properties hold for which router configs.

Tolerance: model logits agree to 1e-5 absolute between backends (float32, see test_dispatch.py
for why not exactly); properties stated as bitwise are checked with assert_array_equal.
"""
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.model import api, moe, parts, routing
from moe_serve.parallel import steps
from tests.tolerances import LOGITS_ATOL


def _forward(m, params, toks, **kw):
  """Jitted api.forward (eager op-by-op dispatch is far slower on the shared CPUs)."""
  return jax.jit(functools.partial(api.forward, m, **kw))(params, toks)


def _toks(cfg, shape, seed=1):
  return np.asarray(jax.random.randint(jax.random.key(seed), shape, 3, cfg.model.vocab_size))


def _prefill_batch(toks_PxL, segs, slots=None, decode_rows=1):
  p, c = toks_PxL.shape
  slots = np.arange(p) if slots is None else np.asarray(slots)
  idle = parts.decode_part(np.zeros(decode_rows), np.arange(decode_rows), np.zeros(decode_rows),
                           -np.ones(decode_rows))
  lens = np.where(np.asarray(segs) >= 0, c, 0)
  return parts.StepBatch(idle, parts.chunk_part(toks_PxL, slots, np.zeros(p), lens, segs))


@pytest.mark.parametrize("scope", ["none", "batch", "sequence"])
def test_backends_agree_in_the_model(tiny_cfg, scope):
  tiny_cfg.model.num_layers = 1  # compile time: the layer count does not matter here
  r = tiny_cfg.model.router
  r.update(capacity_scope=scope, capacity_factor_prefill=0.75, group_size=8, priority="token")
  params = steps.make_init_fn(tiny_cfg.model)(0)
  toks = _toks(tiny_cfg, (2, 12))
  out = {}
  for backend in ("einsum", "gather", "sorted") + (("ragged",) if scope == "none" else ()):
    r.dispatch = backend
    logits, aux = _forward(tiny_cfg.model, params, toks)
    out[backend] = np.asarray(logits)
    if scope == "batch":
      assert float(aux["drop_rate"].max()) > 0  # the capped cases really drop
  for backend, logits in out.items():
    np.testing.assert_allclose(logits, out["einsum"], atol=LOGITS_ATOL, rtol=0, err_msg=backend)


def test_routing_records_only_when_asked(tiny_cfg):
  m = tiny_cfg.model
  m.router.update(capacity_scope="batch", capacity_factor_prefill=0.5)
  params = steps.make_init_fn(m)(0)
  toks = _toks(tiny_cfg, (2, 8))
  _, aux = _forward(m, params, toks)
  assert "routing" not in aux
  out_shapes = jax.eval_shape(lambda p: api.forward(m, p, toks), params)
  # logits + lb_loss, z_loss, expert_load, drop_rate: nothing [T, K] is computed into outputs.
  assert len(jax.tree.leaves(out_shapes)) == 5 and set(out_shapes[1]) == {
      "lb_loss", "z_loss", "expert_load", "drop_rate"}
  _, aux = _forward(m, params, toks, record_routing=True)
  assert len(aux["routing"]) == m.num_layers  # moe_every=1
  for rt, drop in zip(aux["routing"], np.asarray(aux["drop_rate"])):
    assert isinstance(rt, routing.Routing)
    assert rt.expert_index.shape == rt.kept.shape == rt.combine_weight.shape == (16, m.router.k)
    assert drop == pytest.approx(1.0 - float(rt.kept.mean()), abs=1e-6)
  assert 0 < float(aux["drop_rate"].max()) < 1


def test_step_records_routing_over_decode_then_prefill_tokens(tiny_cfg):
  m = tiny_cfg.model
  m.moe_every = 2  # one MoE layer of two
  params = steps.make_init_fn(m)(0)
  batch = _prefill_batch(_toks(tiny_cfg, (2, 4)), [5, -1], decode_rows=3)
  step = jax.jit(functools.partial(api.step, m, record_routing=True))
  _, _, aux = step(params, steps.make_cache_fn(m)(3), batch)
  (rt,) = aux["routing"]
  assert rt.kept.shape == (3 + 2 * 4, m.router.k)
  # Idle decode rows and the empty chunk row are padding: never kept.
  np.testing.assert_array_equal(np.asarray(rt.kept).any(1), [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
  assert aux["drop_rate"].shape == (1,)


@pytest.mark.parametrize("decode_factor, prefill_factor, dropping", [(0.25, 4.0, True),
                                                                      (4.0, 0.25, False)])
def test_decode_tokens_get_the_decode_capacity_factor(tiny_cfg, decode_factor, prefill_factor,
                                                      dropping):
  """8 decode tokens, batch scope, k=2, E=4: factor 0.25 gives capacity ceil(2*8*0.25/4) = 1,
  so at least 16 - 4 of the 16 pairs drop; factor 4 gives 16 rows and nothing drops."""
  m = tiny_cfg.model
  m.num_layers = 1
  m.router.update(capacity_scope="batch", min_capacity=0, capacity_factor_decode=decode_factor,
                  capacity_factor_prefill=prefill_factor)
  params = steps.make_init_fn(m)(0)
  toks = _toks(tiny_cfg, (8,))
  batch = parts.StepBatch(parts.decode_part(toks, np.arange(8), np.zeros(8), np.arange(8)),
                          parts.empty_part(0, 4))
  _, _, aux = steps.make_step_fn(m, record_routing=True)(params, steps.make_cache_fn(m)(8), batch)
  drops = np.asarray(aux["drop_rate"])
  if dropping:
    assert (drops >= 0.75).all(), drops
  else:
    np.testing.assert_array_equal(drops, 0.0)


def test_router_losses_hand_worked():
  # Uniform logits: p_e = 1/E, so lb = E * sum_e f_e / E = 1; z = logsumexp(0)^2 = log(E)^2.
  # Padding (token 2) is excluded from both and from the expert load.
  logits = jnp.zeros((3, 4))
  index = jnp.asarray([[0, 1], [0, 2], [3, 3]])
  lb, z, load = moe.router_losses(logits, index, jnp.asarray([True, True, False]))
  assert float(lb) == pytest.approx(1.0)
  assert float(z) == pytest.approx(np.log(4.0) ** 2)
  np.testing.assert_allclose(np.asarray(load), [0.5, 0.25, 0.25, 0.0])


def test_collect_aux_sums_losses_and_keeps_layer_order():
  layer = lambda i: {"moe": {"lb_loss": (jnp.float32(i),), "z_loss": (jnp.float32(2 * i),),
                             "expert_load": (jnp.full((2,), i, jnp.float32),),
                             "drop_rate": (jnp.float32(i / 100),)}}
  state = {"aux": {f"block_{i}": layer(i) for i in (0, 10, 2, 1)}}
  aux = api.collect_aux(state)
  assert float(aux["lb_loss"]) == 13 and float(aux["z_loss"]) == 26
  np.testing.assert_allclose(np.asarray(aux["drop_rate"]), [0, 0.01, 0.02, 0.10])
  np.testing.assert_array_equal(np.asarray(aux["expert_load"])[:, 0], [0, 1, 2, 10])
  assert "routing" not in aux


def test_jitter_only_with_an_rng(tiny_cfg):
  m = tiny_cfg.model
  m.num_layers = 1
  params = steps.make_init_fn(m)(0)
  toks = _toks(tiny_cfg, (2, 8))
  base, _ = _forward(m, params, toks)
  m.router.jitter = 0.5
  served, _ = _forward(m, params, toks)
  trained, _ = jax.jit(lambda p, t, k: api.forward(m, p, t, jitter_rng=k))(
      params, toks, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(served), np.asarray(base))
  assert not np.allclose(np.asarray(trained), np.asarray(base), atol=1e-3)


def test_non_causal_router_warns_once(tiny_cfg, caplog):
  m = tiny_cfg.model
  m.num_layers = 1
  m.router.update(kind="expert_choice", k=1, capacity_scope="group", group_size=5)
  moe._warned_non_causal.clear()  # pylint: disable=protected-access
  params = steps.make_init_fn(m)(0)
  with caplog.at_level(logging.WARNING):  # two traces (shapes), no compiles needed
    for length in (6, 7):
      jax.eval_shape(functools.partial(api.forward, m), params, _toks(tiny_cfg, (1, length)))
  warnings = [r for r in caplog.records if "is not causal" in r.getMessage()]
  assert len(warnings) == 1 and "expert_choice" in warnings[0].getMessage()


def _decode_token_by_token(m, params, toks):
  step = steps.make_step_fn(m)
  cache = steps.make_cache_fn(m)(toks.shape[0])
  b = toks.shape[0]
  out = []
  for t in range(toks.shape[1]):
    batch = parts.StepBatch(parts.decode_part(toks[:, t], np.arange(b), np.full(b, t),
                                              np.arange(b)), parts.empty_part(0, 4))
    logits, cache, aux = step(params, cache, batch)
    np.testing.assert_array_equal(np.asarray(aux["drop_rate"]), 0.0)
    out.append(np.asarray(logits["decode"]))
  return np.stack(out, 1)


def test_sequence_scope_decode_equals_the_dropless_forward(tiny_cfg):
  """A decode step gives each request a one-token instance whose capacity is >= 1 per expert,
  so decoding never drops: it equals the dropless (`none`) full forward, not the `sequence` full
  forward, which drops when a request's prompt overloads an expert. This is why the
  cache-equals-full-forward contract holds for `sequence` only where the forward drops nothing."""
  m = tiny_cfg.model
  m.router.update(capacity_scope="sequence", capacity_factor_prefill=0.5,
                  capacity_factor_decode=0.5, priority="token")
  params = steps.make_init_fn(m)(0)
  toks = _toks(tiny_cfg, (2, 12))
  decoded = _decode_token_by_token(m, params, toks)
  capped, aux = _forward(m, params, toks)
  assert float(aux["drop_rate"].max()) > 0
  assert np.abs(decoded - np.asarray(capped)).max() > 1e-3
  m.router.capacity_scope = "none"
  dropless, _ = _forward(m, params, toks)
  np.testing.assert_allclose(decoded, np.asarray(dropless), atol=LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("dispatch", ["gather"])  # einsum: test_backends_agree_in_the_model
def test_sequence_scope_single_shot_prefill_equals_forward_with_drops(tiny_cfg, dispatch):
  """Prefilling a whole request in one chunk makes the same scope instance (the request's 12
  tokens, prefill factor) as the full forward, so they agree even though tokens are dropped."""
  m = tiny_cfg.model
  m.router.update(capacity_scope="sequence", capacity_factor_prefill=0.5, priority="position",
                  dispatch=dispatch)
  params = steps.make_init_fn(m)(0)
  toks = _toks(tiny_cfg, (2, 12))
  logits, _, aux = steps.make_step_fn(m, record_routing=True)(params, steps.make_cache_fn(m)(2),
                                                              _prefill_batch(toks, [0, 1]))
  assert float(aux["drop_rate"].max()) > 0
  full, _ = _forward(m, params, toks)
  np.testing.assert_allclose(np.asarray(logits["prefill"]), np.asarray(full),
                             atol=LOGITS_ATOL, rtol=0)


# gather: tokens share [E, C, D] buffers with other requests' tokens, the case that could leak.
@pytest.mark.parametrize("dispatch", ["gather"])
def test_sequence_scope_is_batch_invariant_batch_scope_is_not(tiny_cfg, dispatch):
  """Request 1's prefill logits (chunk row 1), alone (row 0 padding) vs sharing the step with
  request 0, in the same step shape: bitwise equal under `sequence`, different under `batch`,
  where request 0's tokens come first in token priority and take the capacity request 1 had."""
  m = tiny_cfg.model
  m.router.update(capacity_factor_prefill=0.5, priority="token", dispatch=dispatch)
  params = steps.make_init_fn(m)(0)
  toks = _toks(tiny_cfg, (2, 12), seed=4)
  result = {}
  for scope in ("sequence", "batch"):
    m.router.capacity_scope = scope
    step = steps.make_step_fn(m)
    alone, _, _ = step(params, steps.make_cache_fn(m)(2), _prefill_batch(toks, [-1, 1]))
    shared, _, _ = step(params, steps.make_cache_fn(m)(2), _prefill_batch(toks, [0, 1]))
    result[scope] = (np.asarray(alone["prefill"][1]), np.asarray(shared["prefill"][1]))
  np.testing.assert_array_equal(*result["sequence"])
  assert np.abs(result["batch"][0] - result["batch"][1]).max() > 1e-3
