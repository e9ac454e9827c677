"""Hand-worked routing masks for every capacity scope x priority (docs/routing.md has the rules).

Conventions of the hand-worked cases: E=4 experts, k=2. `_logits` gives token t the logit s_t on
its first choice, s_t - 1 on its second and 0 elsewhere, so choices are explicit and the top-1
probability (the `score` priority) grows with s_t. Padding tokens get the largest s so that a bug
letting padding compete would show.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.model import routing

T_, F_ = True, False


def _logits(choices, scores, num_experts=4):
  out = np.zeros((len(choices), num_experts), np.float32)
  for t, ((first, second), s) in enumerate(zip(choices, scores)):
    out[t, first], out[t, second] = s, s - 1.0
  return jnp.asarray(out)


def _router(tiny_cfg, **kw):
  r = tiny_cfg.model.router
  r.update(kind="topk", k=2, renormalize=True, min_capacity=1, capacity_factor_decode=1.0)
  r.update(**kw)
  return r


# Batch scope, T=5, factor 0.8: S = 5 * 0.8 = 4 -> capacity ceil(2 * 4 / 4) = 2 per expert.
# Padding position 2 counts towards S (static) but never takes a slot.
BATCH_CHOICES = [(0, 1), (1, 0), (0, 1), (0, 2), (0, 3)]
BATCH_SCORES = [2.0, 3.0, 9.0, 4.0, 5.0]
BATCH_SEG = [0, 1, -1, 2, 3]
BATCH_KEPT = {
    # first choices in token order: e0 <- t0, t3 (full: t4 dropped); e1 <- t1.
    # second choices: t0->e1 kept (e1 holds t1), t1->e0 dropped (full), t3->e2, t4->e3 kept.
    "position": [[T_, T_], [T_, F_], [F_, F_], [T_, T_], [F_, T_]],
    # token by token: t0 takes e0, e1; t1 takes e1, e0 (e0 now full); t3, t4 lose e0.
    "token": [[T_, T_], [T_, T_], [F_, F_], [F_, T_], [F_, T_]],
    # tokens by top-1 score: t4, t3, t1, t0. Firsts: e0 <- t4, t3 (t0 dropped); e1 <- t1.
    # Seconds: t4->e3, t3->e2 kept; t1->e0 dropped; t0->e1 kept.
    "score": [[F_, T_], [T_, F_], [F_, F_], [T_, T_], [T_, T_]],
}

# Group scope, group_size=3, factor 0.5: S = 1.5 -> capacity ceil(0.75) = 1 per group.
GROUP_CHOICES = [(0, 1), (0, 1), (1, 0), (0, 1), (3, 2), (2, 0)]
GROUP_SCORES = [2.0, 3.0, 4.0, 2.0, 9.0, 3.0]
GROUP_SEG = [0, 1, 2, 3, -1, 4]
GROUP_KEPT = {
    # group 0: firsts t0->e0, t1->e0 (full), t2->e1; seconds all find their expert full.
    # group 1: firsts t3->e0, t5->e2; seconds t3->e1 kept, t5->e0 full.
    "position": [[T_, F_], [F_, F_], [T_, F_], [T_, T_], [F_, F_], [T_, F_]],
    # group 0: t0 takes e0 and e1, so t1 and t2 lose both their choices (residual only).
    "token": [[T_, T_], [F_, F_], [F_, F_], [T_, T_], [F_, F_], [T_, F_]],
    # group 0 by score: t2, t1, t0. Firsts: t2->e1, t1->e0, t0->e0 (full). Seconds all full.
    # group 1 by score: t5, t3 (padding t4 has the top score and is ignored).
    "score": [[F_, F_], [T_, F_], [T_, F_], [T_, T_], [F_, F_], [T_, F_]],
}

# Sequence scope, same choices; requests interleave: seg 0 = {t0, t2}, seg 1 = {t1, t3, t5}.
# factor 0.5: seg 0 S = 1.0 -> capacity 1; seg 1 S = 1.5 -> capacity 1 (padding not counted).
SEQ_SEG = [0, 1, 0, 1, -1, 1]
SEQ_KEPT = {
    # seg 0: firsts t0->e0, t2->e1; seconds both full. seg 1: firsts t1->e0, t3->e0 (full),
    # t5->e2; seconds t1->e1 kept, t3->e1 full, t5->e0 full.
    "position": [[T_, F_], [T_, T_], [T_, F_], [F_, F_], [F_, F_], [T_, F_]],
    # seg 0: t0 takes e0, e1; t2 loses both. seg 1: t1 takes e0, e1; t3 loses both; t5 e2 only.
    "token": [[T_, T_], [T_, T_], [F_, F_], [F_, F_], [F_, F_], [T_, F_]],
    # seg 0 by score: t2, t0 -> firsts kept, seconds full. seg 1: t1 and t5 tie at 3 (token
    # order: t1 first), then t3: firsts t1->e0, t5->e2, t3->e0 full; seconds t1->e1 kept.
    "score": [[T_, F_], [T_, T_], [T_, F_], [F_, F_], [F_, F_], [T_, F_]],
}

CASES = {
    "batch": (BATCH_CHOICES, BATCH_SCORES, BATCH_SEG, 0.8, BATCH_KEPT),
    "group": (GROUP_CHOICES, GROUP_SCORES, GROUP_SEG, 0.5, GROUP_KEPT),
    "sequence": (GROUP_CHOICES, GROUP_SCORES, SEQ_SEG, 0.5, SEQ_KEPT),
}


@pytest.mark.parametrize("priority", ["position", "token", "score"])
@pytest.mark.parametrize("scope", ["batch", "group", "sequence", "none"])
def test_hand_worked_masks(tiny_cfg, scope, priority):
  choices, scores, seg, factor, kept = CASES.get(scope, CASES["batch"])
  r = _router(tiny_cfg, capacity_scope=scope, priority=priority, group_size=3,
              capacity_factor_prefill=factor)
  logits = _logits(choices, scores)
  out = routing.route(logits, jnp.asarray(seg), r)
  np.testing.assert_array_equal(np.asarray(out.expert_index), choices)
  valid = np.asarray(seg)[:, None] >= 0
  want = np.broadcast_to(valid, (len(seg), 2)) if scope == "none" else np.asarray(kept[priority])
  np.testing.assert_array_equal(np.asarray(out.kept), want)
  # Weights: the softmax of the two chosen logits (s, s - 1), renormalised; zero where dropped.
  w_first = 1.0 / (1.0 + np.exp(-1.0))
  want_w = np.where(want, np.array([w_first, 1.0 - w_first]), 0.0)
  np.testing.assert_allclose(np.asarray(out.combine_weight), want_w, rtol=1e-6)


def test_padding_never_takes_a_slot_even_with_the_top_score(tiny_cfg):
  # Five tokens all want expert 0 first; capacity 1 (batch, factor 0.4: S=2, ceil(1)=1).
  r = _router(tiny_cfg, capacity_scope="batch", priority="score", capacity_factor_prefill=0.4)
  logits = _logits([(0, 1)] * 5, [1.0, 2.0, 9.0, 3.0, 1.5])
  out = routing.route(logits, jnp.asarray([0, 1, -1, 2, 3]), r)
  # t3 has the best real score and takes e0; then e1 goes to the best second choice, t3's own.
  np.testing.assert_array_equal(np.asarray(out.kept)[:, 0], [F_, F_, F_, T_, F_])
  np.testing.assert_array_equal(np.asarray(out.kept)[:, 1], [F_, F_, F_, T_, F_])
  assert float(out.combine_weight[2].sum()) == 0.0


def test_score_ties_go_by_token_order(tiny_cfg):
  r = _router(tiny_cfg, capacity_scope="batch", priority="score", capacity_factor_prefill=0.5)
  # capacity ceil(2 * 4 * 0.5 / 4) = 1; t0 and t2 tie for e0; t1, t3 tie for e2 with a lower score.
  logits = _logits([(0, 1), (2, 3), (0, 1), (2, 3)], [3.0, 2.0, 3.0, 2.0])
  out = routing.route(logits, jnp.arange(4), r)
  np.testing.assert_array_equal(np.asarray(out.kept), [[T_, T_], [T_, T_], [F_, F_], [F_, F_]])


def test_position_priority_is_not_causal_token_priority_is(tiny_cfg):
  """t1's second choice (e0) is kept while the later t3 is padding, and evicted by t3's first
  choice once t3 is real: a later token changed an earlier token's routing."""
  logits = _logits(BATCH_CHOICES, BATCH_SCORES)
  alone, crowded = jnp.asarray([0, 1, -1, -1, -1]), jnp.asarray([0, 1, -1, 2, -1])
  r = _router(tiny_cfg, capacity_scope="batch", priority="position",
              capacity_factor_prefill=0.8)
  assert bool(routing.route(logits, alone, r).kept[1, 1])
  assert not bool(routing.route(logits, crowded, r).kept[1, 1])
  r.priority = "token"
  assert bool(routing.route(logits, alone, r).kept[1, 1])
  assert bool(routing.route(logits, crowded, r).kept[1, 1])


@pytest.mark.parametrize("scope", ["batch", "group", "sequence"])
def test_token_priority_later_tokens_never_change_earlier_routing(tiny_cfg, scope):
  r = _router(tiny_cfg, capacity_scope=scope, priority="token", capacity_factor_prefill=0.5,
              group_size=8)
  rng = np.random.default_rng(0)
  seg = jnp.asarray(rng.integers(-1, 4, size=40))
  logits = jnp.asarray(rng.normal(size=(40, 4)), jnp.float32)
  base = routing.route(logits, seg, r)
  assert not bool(base.kept[np.asarray(seg) >= 0].all())  # capacity binds in this case
  for cut in (5, 17, 33):
    changed = logits.at[cut:].set(jnp.asarray(rng.normal(size=(40 - cut, 4)), jnp.float32))
    out = routing.route(changed, seg, r)
    np.testing.assert_array_equal(np.asarray(out.kept[:cut]), np.asarray(base.kept[:cut]))


def test_capacity_per_instance_uses_decode_and_prefill_factors(tiny_cfg):
  r = _router(tiny_cfg, capacity_scope="group", group_size=4, capacity_factor_decode=0.5,
              capacity_factor_prefill=1.25, min_capacity=1)
  # 10 positions, 4 decode. Groups: [d d d d] S=2.0 -> ceil(1.0)=1; [p p p p] S=5.0 -> 3;
  # [p p] S=2.5 -> ceil(1.25)=2.
  inst, cap, sizes = routing.instance_capacities(r, 4, 10, num_decode=4)
  np.testing.assert_array_equal(inst, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(cap, [1, 3, 2])
  np.testing.assert_array_equal(sizes, [4, 4, 2])
  assert routing.buffer_capacity(r, 4, 10, num_decode=4) == 6
  r.capacity_scope = "batch"  # S = 2.0 + 7.5 = 9.5 -> ceil(4.75) = 5
  np.testing.assert_array_equal(routing.instance_capacities(r, 4, 10, 4)[1], [5])
  r.min_capacity = 7
  np.testing.assert_array_equal(routing.instance_capacities(r, 4, 10, 4)[1], [7])
  assert routing.buffer_capacity(r, 4, 10, 4) == 7


def test_sequence_scope_buffer_is_bounded_per_row_in_an_engine_step(tiny_cfg):
  r = _router(tiny_cfg, capacity_scope="sequence", capacity_factor_decode=1.0,
              capacity_factor_prefill=1.0, min_capacity=1, k=2)
  # The default study's step: 16 decode rows [16, 1] and 2 prefill rows [2, 64], E=8, k=2.
  # Decode row: S=1.0 -> max(1, ceil(0.25)) = 1 = its size. Prefill row: S=64 -> ceil(16) = 16.
  shapes = ((16, 1), (2, 64))
  inst, cap, sizes = routing.instance_capacities(r, 8, 144, 16, shapes)
  np.testing.assert_array_equal(inst[[0, 15, 16, 79, 80, 143]], [0, 15, 16, 16, 17, 17])
  np.testing.assert_array_equal(cap, [1] * 16 + [16, 16])
  np.testing.assert_array_equal(sizes, [1] * 16 + [64, 64])
  assert routing.buffer_capacity(r, 8, 144, 16, shapes) == 16 + 2 * 16
  r.capacity_factor_prefill = 2.0
  assert routing.buffer_capacity(r, 8, 144, 16, shapes) == 16 + 2 * 32
  # Without the row layout (a packed forward), a request may fill all T tokens.
  assert routing.buffer_capacity(r, 8, 144, 16) == 144
  assert routing.buffer_capacity(r, 8, 0, 0, ((0, 1), (0, 64))) == 0
  with pytest.raises(ValueError, match="hold 80 tokens, not 144"):
    routing.buffer_capacity(r, 8, 144, 16, ((16, 1), (1, 64)))


def test_capacity_ceiling_is_exact_for_non_dyadic_factors():
  # factor 1.1, G=50, k=4, E=4: 1.1 * 50 * 4 / 4 is 55.00000000000001 in float64, so a float
  # ceiling would give 56; in thousandths it is exactly 55 (numpy and jnp paths alike).
  assert math.ceil(1.1 * 50 * 4 / 4) == 56
  assert int(routing.capacity(4, 4, 50 * routing.factor_milli(1.1), 0)) == 55
  assert int(routing.capacity(4, 4, jnp.asarray(50 * routing.factor_milli(1.1)), 0)) == 55


def test_sequence_capacity_counts_each_request_separately(tiny_cfg):
  # One request of 4 tokens all on e0 (capacity ceil(2*4*0.5/4) = 1) keeps 1 first choice,
  # whatever a second request does; a one-token request always keeps its k choices.
  r = _router(tiny_cfg, capacity_scope="sequence", priority="token",
              capacity_factor_prefill=0.5)
  logits = _logits([(0, 1)] * 5, [1.0] * 5)
  out = routing.route(logits, jnp.asarray([7, 7, 7, 7, 3]), r)
  np.testing.assert_array_equal(np.asarray(out.kept),
                                [[T_, T_], [F_, F_], [F_, F_], [F_, F_], [T_, T_]])


def test_expert_choice_hand_worked(tiny_cfg):
  r = _router(tiny_cfg, kind="expert_choice", k=1, capacity_scope="batch",
              capacity_factor_prefill=1.0)
  # E=2, T=4: capacity ceil(1 * 4 / 2) = 2 tokens per expert. Padding t2 would top expert 0.
  logits = jnp.asarray([[2.0, 0.0], [0.0, 1.0], [5.0, 0.0], [1.0, 0.0]])
  out = routing.route(logits, jnp.asarray([0, 1, -1, 2]), r)
  # e0 ranks t0 (.88), t3 (.73), t1 (.27); e1 ranks t1 (.73), t3 (.27), t0 (.12).
  np.testing.assert_array_equal(np.asarray(out.kept), [[T_, F_], [F_, T_], [F_, F_], [T_, T_]])
  np.testing.assert_array_equal(np.asarray(out.expert_index), [[0, 1]] * 4)
  probs = np.asarray(jnp.exp(logits) / jnp.exp(logits).sum(1, keepdims=True))
  np.testing.assert_allclose(np.asarray(out.combine_weight), np.where(out.kept, probs, 0.0),
                             rtol=1e-6)
  assert float(routing.drop_rate(out, jnp.asarray([0, 1, -1, 2]), expert_choice=True)) == 0.0


def test_hash_router_depends_only_on_the_token_id(tiny_cfg):
  r = _router(tiny_cfg, kind="hash", capacity_scope="none")
  ids = jnp.asarray([5, 9, 5, 200, 9, 31])
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)
  out = routing.route(logits, jnp.arange(6), r, token_ids_T=ids)
  idx = np.asarray(out.expert_index)
  np.testing.assert_array_equal(idx[0], idx[2])
  np.testing.assert_array_equal(idx[1], idx[4])
  assert all(len(set(row)) == 2 for row in idx)  # k distinct experts
  assert len({tuple(row) for row in idx}) > 1  # not a constant map
  with pytest.raises(ValueError, match="token_ids_T"):
    routing.route(logits, jnp.arange(6), r)


def test_drop_rate_counts_real_pairs_only(tiny_cfg):
  r = _router(tiny_cfg, capacity_scope="batch", priority="token", capacity_factor_prefill=0.8)
  out = routing.route(_logits(BATCH_CHOICES, BATCH_SCORES), jnp.asarray(BATCH_SEG), r)
  # token-priority mask: 2 of the 8 real pairs dropped.
  assert float(routing.drop_rate(out, jnp.asarray(BATCH_SEG))) == pytest.approx(2 / 8)


def test_is_causal(tiny_cfg):
  r = _router(tiny_cfg, capacity_scope="batch", priority="token")
  assert routing.is_causal(r)
  r.priority = "position"
  assert not routing.is_causal(r)
  r.capacity_scope = "none"
  assert routing.is_causal(r)
  r.update(kind="expert_choice", capacity_scope="batch")
  assert not routing.is_causal(r)


def test_forced_routing_claims_first_and_forced_drops_take_no_slot(tiny_cfg):
  """Replay codes (routing.py): batch case above (capacity 2 per expert). Token 4 is forced onto
  e1 (kept) and e2 (dropped); token 3 onto e0 (dropped) and e3 (kept)."""
  r = _router(tiny_cfg, capacity_scope="batch", priority="token", capacity_factor_prefill=0.8)
  logits, seg = _logits(BATCH_CHOICES, BATCH_SCORES), jnp.asarray(BATCH_SEG, jnp.int32)
  free = routing.route(logits, seg, r)
  zeros = routing.route(logits, seg, r, forced_TxK=jnp.zeros((5, 2), jnp.int32))
  for a, b in zip(free, zeros):  # no forced token: the free routing, bit for bit
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  codes = np.zeros((5, 2), np.int32)
  codes[4] = routing.encode_forced([1, 2], [True, False])
  codes[3] = routing.encode_forced([0, 3], [False, True])
  rt = routing.route(logits, seg, r, forced_TxK=jnp.asarray(codes))
  index, kept = np.asarray(rt.expert_index), np.asarray(rt.kept)
  np.testing.assert_array_equal(index[3:], [[0, 3], [1, 2]])
  np.testing.assert_array_equal(kept[3:], [[F_, T_], [T_, F_]])
  # Free pairs: e1 holds t4 (forced, first), then t0 (token order), so t1's first choice on e1
  # is dropped; e0 holds t0 and t1 (t3's forced drop took no slot there).
  np.testing.assert_array_equal(kept[:2], [[T_, T_], [F_, T_]])
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  w = probs[4, [1, 2]] / probs[4, [1, 2]].sum()
  np.testing.assert_allclose(np.asarray(rt.combine_weight)[4], [w[0], 0.0], rtol=1e-6)
  expert, flag = routing.decode_forced(codes[3])
  assert expert.tolist() == [0, 3] and flag.tolist() == [False, True]
