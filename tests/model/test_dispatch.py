"""Dispatch backends agree with each other and with the dense reference.

Tolerance (float32): outputs are O(1) (inputs N(0, 1), weights N(0, 1/fan_in)); backends agree to
2e-6 absolute + 1e-5 relative. They add the same products in different orders (one-hot einsums
over [T, E, C], gathers, ragged matmuls), so exact equality is not expected; a wrong token, slot
or weight changes outputs by O(0.1).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.model import dispatch, routing
from tests.helpers.expert_inputs import D, E, T, inputs, normal, numpy_reference, weights
from tests.tolerances import DISPATCH_ATOL, DISPATCH_RTOL

def _run_all(x, rt, w, cap):
  out = {"einsum": dispatch.einsum_dispatch(x, rt, w, cap),
         "gather": dispatch.gather_dispatch(x, rt, w, cap),
         "ragged": dispatch.ragged_dispatch(x, rt, w),
         "sorted": dispatch.run("sorted", x, rt, w, cap)}
  return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("k", [1, 2])
def test_dropless_every_backend_equals_the_dense_reference(tiny_cfg, k):
  r = tiny_cfg.model.router
  r.update(capacity_scope="none", k=k)
  x, logits, seg = inputs()
  rt = routing.route(logits, seg, r)
  # The reference's weights come from softmax/top-k here, not from the router.
  probs = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
  index = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  weight = np.take_along_axis(probs, index, 1)
  weight = weight / weight.sum(1, keepdims=True) * (np.asarray(seg)[:, None] >= 0)
  want = numpy_reference(x, index, weight, weights())
  cap = routing.buffer_capacity(r, E, T)
  got = _run_all(x, rt, weights(), cap)
  got["dense_reference"] = np.asarray(dispatch.dense_reference(x, rt, weights()))
  got["run_einsum"] = np.asarray(dispatch.run("einsum", x, rt, weights(), cap))
  for name, y in got.items():
    np.testing.assert_allclose(y, want, atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL, err_msg=name)
  assert np.abs(want[np.asarray(seg) < 0]).max() == 0.0  # padding passes on its residual only


@pytest.mark.parametrize("kind", ["topk", "hash", "expert_choice"])
@pytest.mark.parametrize("priority", ["position", "token", "score"])
@pytest.mark.parametrize("scope", ["batch", "group", "sequence"])
def test_backends_agree_when_dropping(tiny_cfg, scope, priority, kind):
  r = tiny_cfg.model.router
  r.update(kind=kind, capacity_scope=scope, priority=priority, capacity_factor_prefill=0.75,
           capacity_factor_decode=0.5, group_size=8, k=1 if kind == "expert_choice" else 2)
  x, logits, seg = inputs(seed=3)
  ids = jnp.arange(T) * 7 % 11
  rt = routing.route(logits, seg, r, num_decode=5, token_ids_T=ids)
  drops = float(routing.drop_rate(rt, seg, kind == "expert_choice"))
  assert drops > 0.05, "the case must actually drop"
  cap = routing.buffer_capacity(r, E, T, num_decode=5)
  got = _run_all(x, rt, weights(1), cap)
  want = numpy_reference(x, rt.expert_index, rt.combine_weight, weights(1))
  for name, y in got.items():
    np.testing.assert_allclose(y, want, atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL, err_msg=name)


def test_buffer_capacity_bounds_every_experts_kept_pairs(tiny_cfg):
  r = tiny_cfg.model.router
  x, logits, seg = inputs(seed=5)
  for scope in ("batch", "group", "sequence", "none"):
    r.update(capacity_scope=scope, capacity_factor_prefill=1.5, group_size=8)
    rt = routing.route(logits, seg, r, num_decode=3)
    per_expert = np.bincount(np.asarray(rt.expert_index)[np.asarray(rt.kept)], minlength=E)
    assert per_expert.max() <= routing.buffer_capacity(r, E, T, 3), scope


@pytest.mark.parametrize("kind", ["topk", "expert_choice"])
@pytest.mark.parametrize("cf,min_capacity", [(0.5, 1), (1.0, 1), (1.5, 1), (0.5, 3)])
@pytest.mark.parametrize("lens", [(8, 8, 8, 8), (8, 5, 8, 0)])
def test_sequence_scope_row_bound_holds_when_every_token_wants_one_expert(tiny_cfg, kind, cf,
                                                                         min_capacity, lens):
  """An engine step's layout (5 decode rows, 4 prefill rows of 8, one request per row; full
  rows, or short and empty ones): the per-row buffer bound holds even when all tokens prefer
  expert 0, is reached with full rows, and the buffer backends at that bound equal the
  reference (nothing the router kept is lost)."""
  r = tiny_cfg.model.router
  r.update(kind=kind, capacity_scope="sequence", capacity_factor_prefill=cf,
           capacity_factor_decode=cf, min_capacity=min_capacity,
           k=1 if kind == "expert_choice" else 2)
  shapes = ((5, 1), (4, 8))
  seg_T = np.concatenate([np.arange(5)] + [np.where(np.arange(8) < n, 5 + i, -1)
                                           for i, n in enumerate(lens)])
  x, logits, _ = inputs(seed=7)
  logits = logits.at[:, 0].add(20.0)  # every token's first choice: expert 0
  rt = routing.route(logits, jnp.asarray(seg_T, jnp.int32), r, num_decode=5)
  cap = routing.buffer_capacity(r, E, T, 5, shapes)
  assert cap < T
  per_expert = np.bincount(np.asarray(rt.expert_index)[np.asarray(rt.kept)], minlength=E)
  assert per_expert.max() <= cap
  if kind == "topk":  # 5 decode tokens + min(n, the request's capacity) from each prefill row
    want_0 = 5 + sum(min(n, max(min_capacity, math.ceil(2 * cf * n / E))) for n in lens)
    assert per_expert[0] == want_0
    if min(lens) == 8:
      assert want_0 == cap  # the bound is tight
  want = numpy_reference(x, rt.expert_index, rt.combine_weight, weights(2))
  for name, y in _run_all(x, rt, weights(2), cap).items():
    np.testing.assert_allclose(y, want, atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL, err_msg=name)


def test_too_small_a_buffer_drops_rather_than_corrupts(tiny_cfg):
  """If a caller passes fewer buffer rows than kept pairs, both buffer backends drop the excess
  pairs the same way (rank >= capacity) instead of writing into another expert's rows."""
  r = tiny_cfg.model.router
  r.update(capacity_scope="none")
  x, logits, seg = inputs(seed=6)
  rt = routing.route(logits, seg, r)
  a = dispatch.einsum_dispatch(x, rt, weights(), 3)
  b = dispatch.gather_dispatch(x, rt, weights(), 3)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL)
  slot = np.asarray(dispatch.buffer_slots(rt, E))
  keep = np.asarray(rt.kept) & (slot < 3)
  want = numpy_reference(x, rt.expert_index, np.where(keep, rt.combine_weight, 0.0), weights())
  np.testing.assert_allclose(np.asarray(b), want, atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL)


def test_buffer_slots_are_ranks_per_expert():
  rt = routing.Routing(jnp.asarray([[0, 1], [1, 0], [0, 2], [0, 1]]),
                       jnp.ones((4, 2)), jnp.asarray([[1, 1], [1, 0], [0, 1], [1, 1]], bool))
  slot = np.asarray(dispatch.buffer_slots(rt, 3))
  kept = np.asarray(rt.kept)
  # expert 0 kept pairs in (token, choice) order: (0,0), (3,0); expert 1: (0,1), (1,0), (3,1).
  np.testing.assert_array_equal(np.where(kept, slot, -1), [[0, 0], [1, -1], [-1, 0], [1, 2]])


def test_buffers_carry_expert_sharding_constraints(tiny_cfg):
  """Under a mesh with an `expert` axis, the [E, C, D] buffers are annotated to split over it."""
  from jax.sharding import AxisType  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  mesh = jax.make_mesh((2, 4), ("data", "expert"), axis_types=(AxisType.Auto,) * 2)
  rules = (("exp", "expert"), ("embed_moe", None), ("activation_tokens", "data"),
           ("activation_embed", None))
  r = tiny_cfg.model.router
  r.update(capacity_scope="batch", capacity_factor_prefill=1.0)
  x, logits, seg = inputs()
  x, logits, seg = x[:32], logits[:32], seg[:32]
  cap = routing.buffer_capacity(r, E, 32)

  w = weights()
  for backend in ("einsum", "gather"):
    def f(x, logits, seg, w, backend=backend):
      with nn.logical_axis_rules(rules):
        return dispatch.run(backend, x, routing.route(logits, seg, r), w, cap)
    with jax.set_mesh(mesh):
      hlo = jax.jit(f).lower(x, logits, seg, w).as_text()
    # Both [E, C, D] = [4, cap, 16] buffers (experts' inputs and outputs) split over `expert`,
    # the tokens [T, D] over `data` (Shardy constraints in the lowered module).
    buffers = f'[{{"expert"}}, {{}}, {{}}]> : tensor<4x{cap}x16xf32>'
    tokens = '[{"data"}, {}]> : tensor<32x16xf32>'
    lines = [l for l in hlo.splitlines() if "sdy.sharding_constraint" in l]
    assert sum(buffers in l for l in lines) == 2, (backend, lines)
    assert sum(tokens in l for l in lines) >= 2, (backend, lines)
    # Sharded experts: batched expert matmuls (no per-expert loop) so SPMD can split them.
    assert "stablehlo.while" not in hlo, backend
  assert "stablehlo.while" in jax.jit(f).lower(x, logits, seg, w).as_text()  # no mesh: loop


def test_expert_loop_equals_batched_experts():
  x_ExCxD = normal(np.random.default_rng(7), (E, 5, D))
  loop = dispatch.expert_buffers(weights(), x_ExCxD, loop=True)
  batched = dispatch.expert_buffers(weights(), x_ExCxD, loop=False)
  np.testing.assert_allclose(np.asarray(loop), np.asarray(batched),
                             atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL)


def test_the_backend_that_runs_is_one_rule():
  """dispatch.runs: what the model runs and the clock prices (serving/clock/step_cost.py)."""
  assert [dispatch.runs(b, sharded=False) for b in dispatch.BACKENDS] == list(dispatch.BACKENDS)
  assert dispatch.runs("sorted", sharded=True) == "gather"  # by index over all-to-all
  assert dispatch.runs("einsum", sharded=True) == "einsum"
  assert {dispatch.runs(b, False, invariant=True) for b in dispatch.BACKENDS} == {"sorted"}
  with pytest.raises(ValueError, match="model.router.dispatch='gathr' is not one of einsum"):
    dispatch.runs("gathr", sharded=False)
