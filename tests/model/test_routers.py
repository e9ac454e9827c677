"""The DeepSeek-V3, DeepSeek-V2 and gpt-oss routers (router.score, selection_bias, expert groups,
scale; docs/routing.md "Routers"): choice and weights against numpy references written from HF
transformers' semantics, what `score` priority ranks by (hand-worked), replay with a sigmoid
grouped router (its batch invariance: test_experts.py, at the layer).

Tolerance: weights agree with the float64 references to 1e-6 relative (float32 sigmoid/softmax
and one division; a wrong expert or a missed renormalisation moves them by O(0.1)).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.model import routing
from tests.helpers.expert_inputs import normal

T, E = 48, 16  # 4 groups of 4 experts


def _router(tiny_cfg, **kw):
  r = tiny_cfg.model.router
  r.update(kind="topk", capacity_scope="none", min_capacity=0)
  r.update(**kw)
  return r


V3 = dict(k=4, score="sigmoid", selection_bias=True, expert_groups=4, topk_groups=2,
          group_score="top2_sum", renormalize=True, scale=2.5)
V2 = dict(k=4, score="softmax", expert_groups=4, topk_groups=2, group_score="max",
          renormalize=False, scale=16.0)  # group_limited_greedy; HF's V2 never renormalises
GPT_OSS = dict(k=4, score="softmax", renormalize=True)  # b_router is already in the logits


def _reference(logits, kind, k, bias=None, groups=1, topk_groups=1, scale=1.0):
  """float64 numpy, from HF: DeepseekV3TopkRouter, DeepseekV2TopkRouter (group_limited_greedy),
  GptOssTopKRouter. Returns (expert ids sorted, their weights) per token."""
  x = np.asarray(logits, np.float64)
  if kind == "gpt_oss":  # top-k of the logits, softmax over those k only
    idx = np.argsort(-x, axis=1)[:, :k]
    top = np.take_along_axis(x, idx, 1)
    w = np.exp(top - top.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
  else:
    if kind == "v3":
      s = 1 / (1 + np.exp(-x))
      choice = s + bias
      gs = np.sort(choice.reshape(len(x), groups, -1), axis=2)[:, :, -2:].sum(2)
    else:
      s = np.exp(x - x.max(1, keepdims=True))
      s /= s.sum(1, keepdims=True)
      choice = s.copy()
      gs = choice.reshape(len(x), groups, -1).max(2)
    best = np.argsort(-gs, axis=1)[:, :topk_groups]
    allowed = np.zeros_like(gs, bool)
    np.put_along_axis(allowed, best, True, 1)
    choice = np.where(np.repeat(allowed, x.shape[1] // groups, 1), choice, -np.inf)
    idx = np.argsort(-choice, axis=1)[:, :k]
    w = np.take_along_axis(s, idx, 1)
    if kind == "v3":
      w = w / (w.sum(1, keepdims=True) + 1e-20)
    w = w * scale
  order = np.argsort(idx, axis=1)
  return np.take_along_axis(idx, order, 1), np.take_along_axis(w, order, 1)


@pytest.mark.parametrize("name", ["v3", "v2", "gpt_oss"])
def test_router_matches_the_hf_reference(tiny_cfg, name):
  opts = {"v3": V3, "v2": V2, "gpt_oss": GPT_OSS}[name]
  r = _router(tiny_cfg, **opts)
  rng = np.random.default_rng(7)
  logits = normal(rng, (T, E), 2.0)  # continuous: ties have probability zero
  bias = np.asarray(normal(rng, (E,), 0.5)) if name == "v3" else None
  rt = routing.route(logits, jnp.zeros(T, jnp.int32), r,
                     selection_bias_E=None if bias is None else jnp.asarray(bias))
  idx, w = np.asarray(rt.expert_index), np.asarray(rt.combine_weight)
  order = np.argsort(idx, axis=1)
  ref_idx, ref_w = _reference(logits, name, 4, bias, 4, 2, opts.get("scale", 1.0))
  np.testing.assert_array_equal(np.take_along_axis(idx, order, 1), ref_idx)
  np.testing.assert_allclose(np.take_along_axis(w, order, 1), ref_w, rtol=1e-6, atol=0)
  if name != "gpt_oss":  # the group limit (and V3's bias) really changed some choices
    plain_idx, _ = _reference(logits, "gpt_oss", 4)
    assert (plain_idx != ref_idx).any(axis=1).sum() >= T // 4


def _sigmoid_logits(scores):
  s = np.asarray(scores, np.float64)
  return jnp.asarray(np.log(s / (1 - s)), jnp.float32)


@pytest.mark.parametrize("case", ["k1", "k2"])
def test_score_priority_ranks_by_the_best_unbiased_score_of_the_chosen(tiny_cfg, case):
  """docs/routing.md: a full expert ranks its claimants by the token's best *unbiased* score among
  the experts it chose. Sigmoid scores (given directly), selection bias b = [0.5, 0, 0, 0], batch
  scope over T = 2 with factor 1: capacity ceil(k * 2 / 4) = 1 per expert.

  k1: t0 scores [0.5, 0.7, .1, .1] -> biased [1.0, 0.7, ..] chooses e0 (priority 0.5);
      t1 scores [0.6, 0.1, .1, .1] -> chooses e0 (priority 0.6). t1 ranks first: t0's e0 is
      dropped. (Ranking by the best score over all experts, 0.7 vs 0.6, would drop t1's.)
  k2: t0 scores [0.6, 0.3, .1, .1] -> biased [1.1, 0.3, ..] chooses (e0, e1), priority 0.6;
      t1 scores [0.5, .1, 0.9, .1] -> biased [1.0, .1, 0.9, ..] chooses (e0, e2), priority 0.9.
      Both claim e0 first: t1 wins, t0's e0 is dropped. (Ranking by the biased selection score
      of the first choice, 1.1 vs 1.0, would drop t1's.)
  """
  if case == "k1":
    k, scores, kept = 1, [[0.5, 0.7, 0.1, 0.1], [0.6, 0.1, 0.1, 0.1]], [[False], [True]]
    index = [[0], [0]]
  else:
    k, scores, kept = 2, [[0.6, 0.3, 0.1, 0.1], [0.5, 0.1, 0.9, 0.1]], [[False, True], [True, True]]
    index = [[0, 1], [0, 2]]
  r = _router(tiny_cfg, k=k, score="sigmoid", selection_bias=True, renormalize=False,
              capacity_scope="batch", priority="score", capacity_factor_prefill=1.0)
  rt = routing.route(_sigmoid_logits(scores), jnp.asarray([0, 1]), r,
                     selection_bias_E=jnp.asarray([0.5, 0.0, 0.0, 0.0]))
  np.testing.assert_array_equal(np.asarray(rt.expert_index), index)
  np.testing.assert_array_equal(np.asarray(rt.kept), kept)
  # The kept pairs' weights are the unbiased scores (renormalize off, scale 1).
  w = np.where(kept, np.take_along_axis(np.asarray(scores), np.asarray(index), 1), 0.0)
  np.testing.assert_allclose(np.asarray(rt.combine_weight), w, rtol=1e-6)


def test_replay_with_a_sigmoid_grouped_router_reproduces_the_recording(tiny_cfg):
  """Request 0 routed alone (sequence scope, drops) is recorded; replayed inside a step with two
  other requests, its tokens get the recorded experts, keep flags and weights, bit for bit."""
  r = _router(tiny_cfg, **V3)
  r.update(capacity_scope="sequence", priority="score", capacity_factor_prefill=0.5)
  rng = np.random.default_rng(3)
  logits, bias = normal(rng, (T, E), 2.0), normal(rng, (E,), 0.5)
  seg = np.arange(T) % 3  # request 0 = every third token
  mine = np.flatnonzero(seg == 0)
  route = jax.jit(lambda x, s, codes: routing.route(x, s, r, forced_TxK=codes,
                                                     selection_bias_E=bias))
  alone = route(logits[mine], jnp.zeros(len(mine), jnp.int32), None)
  assert not np.asarray(alone.kept).all()  # the recording has drops
  codes = np.zeros((T, 4), np.int32)
  codes[mine] = routing.encode_forced(alone.expert_index, alone.kept)
  # Request 0's tokens see other logits ordering around them; change the others to make sure.
  mixed = jnp.where(jnp.asarray(seg != 0)[:, None], -logits, logits)
  rt = route(mixed, jnp.asarray(seg), jnp.asarray(codes))
  for got, want in zip(rt, alone):
    np.testing.assert_array_equal(np.asarray(got)[mine], np.asarray(want))


@pytest.mark.parametrize("scope", ["batch", "group", "sequence"])
def test_capacity_with_a_sigmoid_grouped_router(tiny_cfg, scope):
  """Under every capped scope and priority, the V3 router's choices are the dropless ones, no
  (instance, expert) keeps more than its capacity, and a real pair is dropped only where its
  expert is full in its instance."""
  rng = np.random.default_rng(11)
  logits, bias = normal(rng, (T, E), 2.0), normal(rng, (E,), 0.5)
  seg = np.where(np.arange(T) % 7 == 6, -1, np.arange(T) // 10)  # 5 requests, some padding
  free = routing.route(logits, jnp.asarray(seg), _router(tiny_cfg, **V3), selection_bias_E=bias)
  for priority in ("position", "token", "score"):
    r = _router(tiny_cfg, **V3)
    r.update(capacity_scope=scope, priority=priority, capacity_factor_prefill=0.5, group_size=12)
    rt = jax.jit(lambda x, s: routing.route(x, s, r, selection_bias_E=bias))(logits, seg)
    index, kept = np.asarray(rt.expert_index), np.asarray(rt.kept)
    np.testing.assert_array_equal(index, np.asarray(free.expert_index))
    np.testing.assert_array_equal(np.asarray(rt.combine_weight),
                                  np.where(kept, np.asarray(free.combine_weight), 0.0))
    if scope == "sequence":
      inst, cap = seg, {i: max(0, -(-4 * (seg == i).sum() * 500 // (E * 1000)))
                        for i in np.unique(seg)}
    else:
      inst_T, cap_I, _ = routing.instance_capacities(r, E, T, 0)
      inst, cap = inst_T, dict(enumerate(cap_I))
    counts = {}
    for t, e in zip(*np.nonzero(kept)):
      counts[inst[t], index[t, e]] = counts.get((inst[t], index[t, e]), 0) + 1
    assert all(n <= cap[i] for (i, _), n in counts.items()), priority
    dropped = [(inst[t], index[t, j]) for t, j in zip(*np.nonzero(~kept)) if seg[t] >= 0]
    assert dropped, (scope, priority)  # the case really drops
    assert all(counts.get(key, 0) == cap[key[0]] for key in dropped), priority


def test_selection_bias_is_required_when_configured(tiny_cfg):
  r = _router(tiny_cfg, **V3)
  with pytest.raises(ValueError, match="selection_bias_E"):
    routing.route(jnp.zeros((2, E)), jnp.zeros(2, jnp.int32), r)
