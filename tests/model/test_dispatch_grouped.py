"""The expert-parallel (grouped) dispatch executes the same Routing as the flat backends.

Run here without a mesh (the sharding constraints are no-ops), with G given explicitly, so the
arithmetic of the group re-indexing is checked on its own; tests/parallel checks the all-to-all.
Tolerance as in test_dispatch.py (2e-6 absolute + 1e-5 relative, float32, O(1) outputs).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.model import dispatch_grouped, routing
from tests.helpers.expert_inputs import E, T, inputs, numpy_reference, weights
from tests.tolerances import DISPATCH_ATOL, DISPATCH_RTOL


def _route(r, seed):
  x, logits, seg = inputs(seed=seed)
  rt = routing.route(logits, seg, r, num_decode=5, token_ids_T=jnp.arange(T) * 7 % 11)
  return x, rt, seg


# T = 37 rows: 4 and 5 groups both pad the last group.
@pytest.mark.parametrize("kind,scope,groups", [
    ("topk", "batch", 4), ("topk", "batch", 5), ("topk", "group", 4), ("expert_choice", "group", 4),
    ("topk", "sequence", 4), ("topk", "none", 4)])
def test_grouped_dispatch_equals_the_reference(tiny_cfg, kind, scope, groups):
  r = tiny_cfg.model.router
  r.update(kind=kind, capacity_scope=scope, capacity_factor_prefill=0.75,
           capacity_factor_decode=0.5, group_size=8, priority="position",
           k=1 if kind == "expert_choice" else 2)
  x, rt, seg = _route(r, seed=3)
  if scope != "none":
    assert float(routing.drop_rate(rt, seg, kind == "expert_choice")) > 0.05
  cap = dispatch_grouped.group_capacity(T, groups, routing.buffer_capacity(r, E, T, 5), r, E, 5)
  want = numpy_reference(x, rt.expert_index, rt.combine_weight, weights(1))
  for backend in ("einsum", "gather"):
    got = jax.jit(dispatch_grouped.grouped_dispatch, static_argnums=(0, 4, 5))(
        backend, x, rt, weights(1), groups, cap)
    np.testing.assert_allclose(np.asarray(got), want,
                               atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL, err_msg=backend)


@pytest.mark.parametrize("scope", ["batch", "group", "sequence", "none"])
def test_group_capacity_bounds_every_groups_kept_pairs(tiny_cfg, scope):
  """No pair the router kept can find its group's buffer full; for `group` scope the bound is
  the per-instance one, tighter than min(flat capacity, S)."""
  r = tiny_cfg.model.router
  r.update(capacity_scope=scope, capacity_factor_prefill=1.5, group_size=4)
  groups, s = 4, -(-T // 4)
  for seed in range(4):
    _, rt, _ = _route(r, seed=seed)
    flat = routing.buffer_capacity(r, E, T, 5)
    cap = dispatch_grouped.group_capacity(T, groups, flat, r, E, 5)
    group_N = np.repeat(np.arange(T) // s, rt.expert_index.shape[1])
    kept_N = np.asarray(rt.kept).reshape(-1)
    counts = np.zeros((groups, E), int)
    np.add.at(counts, (group_N[kept_N], np.asarray(rt.expert_index).reshape(-1)[kept_N]), 1)
    assert counts.max() <= cap <= min(flat, s), (seed, counts.max(), cap)
  if scope == "group":  # a 10-token group spans instances of 4 tokens (capacity 3): 3 + 3 + 2
    assert cap == 8 < min(flat, s)


def test_group_slots_are_ranks_per_expert_within_each_group():
  index = jnp.asarray([[[0, 1], [1, 0]], [[0, 2], [0, 1]]])
  kept = jnp.asarray([[[1, 1], [1, 0]], [[0, 1], [1, 1]]], bool)
  slot = np.asarray(dispatch_grouped.group_slots(index, kept, 3))
  # group 0: expert 0 (0,0); expert 1 (0,1), (1,0). group 1: expert 2 (0,1); 0 (1,0); 1 (1,1).
  np.testing.assert_array_equal(np.where(np.asarray(kept), slot, -1),
                                [[[0, 0], [1, -1]], [[-1, 0], [0, 0]]])


def test_sequence_scope_group_bound_per_row_when_every_token_wants_one_expert(tiny_cfg):
  """An engine step's layout (5 decode rows, 4 prefill rows of 8): with `row_shapes` the group
  buffers are sized per row, smaller than min(flat, S), and still lose nothing."""
  r = tiny_cfg.model.router
  r.update(capacity_scope="sequence", capacity_factor_prefill=1.0, capacity_factor_decode=1.0,
           k=2, priority="position")
  shapes, groups, s = ((5, 1), (4, 8)), 4, -(-T // 4)
  seg_T = np.concatenate([np.arange(5)] + [np.where(np.arange(8) < n, 5 + i, -1)
                                           for i, n in enumerate([8, 5, 8, 8])])
  x, logits, _ = inputs(seed=8)
  rt = routing.route(logits.at[:, 0].add(20.0), jnp.asarray(seg_T, jnp.int32), r, num_decode=5)
  flat = routing.buffer_capacity(r, E, T, 5, shapes)
  cap = dispatch_grouped.group_capacity(T, groups, flat, r, E, 5, shapes)
  assert cap < min(flat, s)
  group_N = np.repeat(np.arange(T) // s, 2)
  kept_N = np.asarray(rt.kept).reshape(-1)
  counts = np.zeros((groups, E), int)
  np.add.at(counts, (group_N[kept_N], np.asarray(rt.expert_index).reshape(-1)[kept_N]), 1)
  assert counts.max() <= cap
  want = numpy_reference(x, rt.expert_index, rt.combine_weight, weights(1))
  for backend in ("einsum", "gather"):
    got = jax.jit(dispatch_grouped.grouped_dispatch, static_argnums=(0, 4, 5))(
        backend, x, rt, weights(1), groups, cap)
    np.testing.assert_allclose(np.asarray(got), want,
                               atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL, err_msg=backend)
