"""Experts with biases and gpt-oss's clamped activation (model/experts.py) in every dispatch
backend, and the MoE layer with the new routers and experts against a numpy reference of HF's
layers (DeepseekV3MoE / GptOssMLP semantics).

Tolerance: DISPATCH_ATOL/RTOL (tests/tolerances.py: same products, other orders); rows that no
kept pair reaches are checked to be exactly zero (a bias leaking into them would be O(1)).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.model import dispatch, dispatch_grouped, experts, moe, routing
from tests.helpers.expert_inputs import D, E, F, T, inputs, normal, weights
from tests.tolerances import DISPATCH_ATOL, DISPATCH_RTOL

LIMIT, ALPHA = 1.0, 1.702  # limit 1 (gpt-oss: 7) so that the clamps bind on O(1) activations


def _biased_clamped(seed=1):
  w = weights(seed)
  rng = np.random.default_rng(seed + 20)
  return experts.ExpertWeights(w.w_gate_ExDxF, w.w_up_ExDxF, w.w_down_ExFxD,
                               normal(rng, (E, F), 0.5), normal(rng, (E, F), 0.5),
                               normal(rng, (E, D)), act="clamped", limit=LIMIT,
                               alpha=ALPHA)


def _np_expert(x_D, e, w):
  """float64 numpy of HF GptOssExperts for one row and expert (no routing weight)."""
  a = lambda v: np.asarray(v, np.float64)
  gate = x_D @ a(w.w_gate_ExDxF)[e] + a(w.b_gate_ExF)[e]
  up = x_D @ a(w.w_up_ExDxF)[e] + a(w.b_up_ExF)[e]
  gate, up = np.minimum(gate, w.limit), np.clip(up, -w.limit, w.limit)
  glu = gate / (1 + np.exp(-gate * w.alpha))
  return ((up + 1) * glu) @ a(w.w_down_ExFxD)[e] + a(w.b_down_ExD)[e]


def _np_moe(x_TxD, index_TxK, weight_TxK, w):
  """y_t = sum_j weight_tj * (expert_{e_tj}(x_t) incl. b_down): HF adds b_down, then weighs."""
  x = np.asarray(x_TxD, np.float64)
  out = np.zeros_like(x)
  for t in range(x.shape[0]):
    for e, wt in zip(np.asarray(index_TxK[t]), np.asarray(weight_TxK[t])):
      if wt != 0:
        out[t] += wt * _np_expert(x[t], e, w)
  return out


def test_every_backend_runs_biased_clamped_experts_under_capacity(tiny_cfg):
  r = tiny_cfg.model.router
  r.update(capacity_scope="batch", priority="score", capacity_factor_prefill=0.5,
           capacity_factor_decode=0.5, k=2)
  x, logits, seg = inputs(seed=4)
  # Even tokens all want e0, then e1 (capacity 10 each): the last of them lose both choices.
  logits = logits.at[::2, 0].add(10.0).at[::2, 1].add(9.0)
  rt = jax.jit(lambda a, b: routing.route(a, b, r, num_decode=5))(logits, seg)
  assert float(routing.drop_rate(rt, seg)) > 0.05, "the case must actually drop"
  w = _biased_clamped()
  cap = routing.buffer_capacity(r, E, T, num_decode=5)
  want = _np_moe(x, rt.expert_index, rt.combine_weight, w)
  # The clamps bind somewhere (else this would not test them).
  hidden = np.einsum("td,edf->tef", np.asarray(x, np.float64), np.asarray(w.w_up_ExDxF))
  assert (np.abs(hidden + np.asarray(w.b_up_ExF)) > LIMIT).mean() > 0.2
  grouped_cap = dispatch_grouped.group_capacity(T, 4, cap, r, E, 5)

  @jax.jit  # one compile for all of them (eager dispatch is slower on the shared CPUs)
  def run_all(x, rt, w):
    return {
        "dense_reference": dispatch.dense_reference(x, rt, w),
        "einsum": dispatch.einsum_dispatch(x, rt, w, cap),
        "gather": dispatch.gather_dispatch(x, rt, w, cap),
        "ragged": dispatch.ragged_dispatch(x, rt, w),
        "sorted": dispatch.run("sorted", x, rt, w, cap),
        "invariant": dispatch.run("gather", x, rt, w, cap, invariant=True),
        "grouped_einsum": dispatch_grouped.grouped_dispatch("einsum", x, rt, w, 4, grouped_cap),
        "grouped_gather": dispatch_grouped.grouped_dispatch("gather", x, rt, w, 4, grouped_cap),
    }

  got = run_all(x, rt, w)
  none_kept = ~np.asarray(rt.kept).any(1)  # padding and tokens whose every pair was dropped
  assert none_kept.sum() > np.sum(np.asarray(seg) < 0)
  for name, y in got.items():
    y = np.asarray(y)
    np.testing.assert_allclose(y, want, atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL, err_msg=name)
    assert np.all(y[none_kept] == 0.0), name  # no bias leaks into rows no kept pair reaches


def test_expert_loop_equals_batched_with_biases_and_clamp():
  w = _biased_clamped(2)
  x_ExCxD = normal(np.random.default_rng(8), (E, 5, D))
  loop = dispatch.expert_buffers(w, x_ExCxD, loop=True)
  batched = dispatch.expert_buffers(w, x_ExCxD, loop=False)
  want = np.stack([[_np_expert(np.asarray(x_ExCxD[e, c], np.float64), e, w) for c in range(5)]
                   for e in range(E)])
  for y in (loop, batched):
    np.testing.assert_allclose(np.asarray(y), want, atol=DISPATCH_ATOL, rtol=DISPATCH_RTOL)


def _np_scores(logits, sigmoid):
  if sigmoid:
    return 1 / (1 + np.exp(-logits))
  p = np.exp(logits - logits.max(1, keepdims=True))
  return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("family", ["deepseek_v3", "gpt_oss"])
def test_moe_layer_matches_a_numpy_reference_of_hf(tiny_cfg, family):
  """The whole layer, dropless: router (b_router / e_score_bias params), choice, weights, experts
  with their biases and activation, shared expert (V3); parameter names as agreed for the
  importer."""
  m = tiny_cfg.model
  m.update(num_experts=8, shared_expert=False)
  r = m.router
  r.update(capacity_scope="none", dispatch="sorted", k=2)
  if family == "deepseek_v3":
    r.update(score="sigmoid", selection_bias=True, expert_groups=4, topk_groups=2,
             renormalize=True, scale=2.5)
  else:
    r.update(bias=True, renormalize=True)
    m.update(expert_bias=True, expert_act="clamped", swiglu_limit=LIMIT, swiglu_alpha=ALPHA)
  t, d, e, f = 11, m.d_model, m.num_experts, m.d_ff_expert
  x = normal(np.random.default_rng(1), (t, d))
  seg = jnp.asarray(np.where(np.arange(t) == 4, -1, 0), jnp.int32)
  layer = moe.MoE(m)
  params = nn.unbox(jax.jit(layer.init)(jax.random.key(0), x, seg))["params"]
  shapes = jax.tree.map(lambda a: a.shape, params)
  if family == "deepseek_v3":
    assert shapes["e_score_bias"] == (e,) and "b_router" not in shapes
  else:
    assert shapes["b_router"] == (e,)
    assert (shapes["experts"]["b_gate"], shapes["experts"]["b_up"],
            shapes["experts"]["b_down"]) == ((e, f), (e, f), (e, d))
  # Zero-initialised biases would test nothing: give every parameter random values.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [jax.random.normal(k, a.shape) * a.shape[0] ** -0.5
                                     for k, a in zip(keys, leaves)])
  y = np.asarray(jax.jit(lambda p: layer.apply({"params": p}, x, seg))(params))

  a = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
  xs = np.asarray(x, np.float64)
  logits = xs @ a["w_router"] + (a["b_router"] if "b_router" in a else 0.0)
  ex = a["experts"]
  w = experts.ExpertWeights(ex["w_gate"], ex["w_up"], ex["w_down"], ex.get("b_gate"),
                            ex.get("b_up"), ex.get("b_down"), act=m.expert_act,
                            limit=m.swiglu_limit, alpha=m.swiglu_alpha)
  want = np.zeros_like(xs)
  for i in range(t):
    if seg[i] < 0:
      continue
    s = _np_scores(logits[i:i + 1], family == "deepseek_v3")[0]
    if family == "deepseek_v3":  # DeepseekV3TopkRouter
      choice = s + a["e_score_bias"]
      best = np.argsort(-np.sort(choice.reshape(4, 2), axis=1)[:, -2:].sum(1))[:2]
      choice = np.where(np.isin(np.arange(e) // 2, best), choice, -np.inf)
      idx = np.argsort(-choice)[:2]
      wts = s[idx] / (s[idx].sum() + 1e-20) * 2.5
    else:  # GptOssTopKRouter: softmax over the top-k logits
      idx = np.argsort(-logits[i])[:2]
      wts = np.exp(logits[i, idx] - logits[i, idx].max())
      wts /= wts.sum()
    for j, wt in zip(idx, wts):
      if family == "gpt_oss":
        want[i] += wt * _np_expert(xs[i], j, w)
      else:
        h = xs[i] @ ex["w_gate"][j]
        want[i] += wt * ((h / (1 + np.exp(-h))) * (xs[i] @ ex["w_up"][j])) @ ex["w_down"][j]
  np.testing.assert_allclose(y, want, atol=1e-5, rtol=1e-5)  # float32 layer vs float64
  assert np.all(y[4] == 0.0)


def test_moe_row_bits_do_not_depend_on_the_step_shape_with_new_routers(tiny_cfg):
  """model.batch_invariant with a sigmoid grouped router and biased clamped experts: rows 3..5
  have the same bits in a step of 6 rows and one of 40."""
  m = tiny_cfg.model
  m.update(num_experts=8, batch_invariant=True, expert_bias=True, expert_act="clamped")
  m.router.update(capacity_scope="none", k=2, score="sigmoid", selection_bias=True,
                  expert_groups=4, topk_groups=2, scale=2.5)
  layer = moe.MoE(m)
  x = normal(np.random.default_rng(1), (40, m.d_model))
  params = nn.unbox(jax.eval_shape(layer.init, jax.random.key(0), x,
                                   jnp.zeros(40, jnp.int32)))["params"]
  keys = iter(jax.random.split(jax.random.key(9), 16))
  params = jax.tree.map(lambda a: 0.3 * jax.random.normal(next(keys), a.shape), params)
  f = jax.jit(lambda x, s: layer.apply({"params": params}, x, s))
  big = np.asarray(f(x, jnp.arange(40, dtype=jnp.int32)))
  small = np.asarray(f(x[:6], jnp.arange(6, dtype=jnp.int32)))
  np.testing.assert_array_equal(big[3:6], small[3:6])


def test_router_losses_normalise_sigmoid_scores():
  """Sigmoid router: p = sigmoid / its sum per token (DeepSeek-V3's balance loss). logits
  [log 3, 0]: sigmoids 0.75, 0.5 -> p = 0.6, 0.4; the one token chose e0, f = [1, 0]:
  lb = E * f . p = 2 * 0.6 (a softmax would give 2 * 0.75)."""
  logits = jnp.asarray([[np.log(3.0), 0.0]], jnp.float32)
  lb, z, _ = moe.router_losses(logits, jnp.asarray([[0]]), jnp.asarray([True]), "sigmoid")
  assert float(lb) == pytest.approx(1.2, rel=1e-6)
  assert float(z) == pytest.approx(np.log(4.0) ** 2, rel=1e-6)
