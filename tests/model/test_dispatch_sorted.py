"""The `sorted` backend (dispatch_sorted.py): its blocks hold exactly the kept pairs, the static
block bound holds for any routing, and a token's output does not depend on the other tokens."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.model import dispatch, dispatch_sorted, routing
from tests.helpers.expert_inputs import E, T, inputs, weights

M = 4  # small blocks, so that part-filled blocks are common


def _routing(index_TxK, kept_TxK):
  index_TxK, kept_TxK = jnp.asarray(index_TxK, jnp.int32), jnp.asarray(kept_TxK)
  weight_TxK = jnp.where(kept_TxK, 1.0 / index_TxK.shape[1], 0.0)
  return routing.Routing(index_TxK, weight_TxK, kept_TxK)


@pytest.mark.parametrize("case", ["random", "one_expert", "one_pair_each", "nothing_kept"])
def test_layout_rows_are_exactly_the_kept_pairs_in_expert_blocks(case):
  rng = np.random.default_rng(0)
  t, k = 23, 2
  index = rng.integers(0, E, (t, k))
  kept = rng.random((t, k)) < 0.7
  if case == "one_expert":  # every pair on expert 2: the most blocks one expert can need
    index, kept = np.full((t, k), 2), np.ones((t, k), bool)
  elif case == "one_pair_each":  # every expert part-fills a block: the bound's "+ E"
    index, kept = np.zeros((t, k), int), np.zeros((t, k), bool)
    index[:E, 0], kept[:E, 0] = np.arange(E), True
  elif case == "nothing_kept":
    kept[:] = False
  rt = _routing(index, kept)
  src, row, first, end = (np.asarray(a) for a in dispatch_sorted.layout(
      rt.expert_index, dispatch.buffer_slots(rt, E), rt.kept, E, M))
  n = dispatch_sorted.num_blocks(t * k, E, M)
  assert src.shape == (n * M,) and first.shape == end.shape == (E,)
  counts = np.bincount(index[kept], minlength=E)
  assert (end - first == -(-counts // M)).all()  # each expert: the blocks its pairs fill
  assert first[0] == 0 and (first[1:] == end[:-1]).all()  # expert after expert, no gaps
  assert end[-1] <= n  # within the static bound
  expert_n = np.repeat(np.arange(E), end - first)  # the expert of each block in use
  assert (row[~kept] == n * M).all()
  rows = row[kept]
  assert len(set(rows.tolist())) == len(rows)  # one row per kept pair
  assert (expert_n[rows // M] == index[kept]).all()  # each pair in a block of its expert
  assert (src[rows] == np.nonzero(kept)[0]).all()  # ... reading its own token
  assert (src[np.setdiff1d(np.arange(n * M), rows)] == t).all()  # other rows read zeros


def test_a_tokens_output_does_not_depend_on_the_other_tokens(tiny_cfg):
  """Bitwise: token 0 alone, and token 0 among T - 1 others whose pairs fill its experts'
  blocks ahead of it, give the same output (what the batch-invariance contract needs)."""
  x, logits, _ = inputs(seed=4)
  w = weights(2)
  r = tiny_cfg.model.router
  r.update(capacity_scope="none", k=2)
  seg_all = jnp.arange(T, dtype=jnp.int32)
  rt_all = routing.route(logits, seg_all, r)
  alone_seg = jnp.where(jnp.arange(T) == T - 1, T - 1, -1).astype(jnp.int32)
  rt_alone = routing.route(logits, alone_seg, r)
  run = jax.jit(lambda x, rt: dispatch.run("sorted", x, rt, w, T))
  y_all, y_alone = np.asarray(run(x, rt_all)), np.asarray(run(x, rt_alone))
  np.testing.assert_array_equal(y_all[T - 1], y_alone[T - 1])
  np.testing.assert_allclose(  # and it is the right output
      y_all, np.asarray(dispatch.dense_reference(x, rt_all, w)), atol=2e-6, rtol=1e-5)

