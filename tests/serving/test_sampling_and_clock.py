"""Sampling never depends on the batch; the clock's two modes."""
import ml_collections
import numpy as np
import pytest

from configs import serve_default
from moe_serve.model import transformer
from moe_serve.serving.clock import running as clock_lib
from moe_serve.serving.loop import sampling
from moe_serve.serving.clock import step_cost

V = 50


def _sample(logits_RxV, seeds, positions, temp, top_k, top_p):
  r = logits_RxV.shape[0]
  full = lambda x, dt: np.broadcast_to(np.asarray(x, dt), (r,)).copy()
  batch = sampling.SamplingBatch(np.zeros(0, np.int32), full(seeds, np.uint32),
                                 full(positions, np.int32), full(temp, np.float32),
                                 full(top_k, np.int32), full(top_p, np.float32))
  toks, lps = sampling.sample(logits_RxV, np.zeros((0, 1, V), np.float32), batch)
  return np.asarray(toks), np.asarray(lps)


LOGITS = np.random.default_rng(0).normal(size=(8, V)).astype(np.float32) * 2


def test_greedy_is_argmax_and_logprob_is_log_softmax():
  toks, lps = _sample(LOGITS, 0, 0, 0.0, 0, 1.0)
  np.testing.assert_array_equal(toks, LOGITS.argmax(-1))
  ls = LOGITS - np.log(np.exp(LOGITS).sum(-1, keepdims=True))
  np.testing.assert_allclose(lps, ls[np.arange(8), toks], atol=1e-5)


def test_greedy_fast_path_gives_the_general_paths_tokens_and_logprobs():
  """All rows greedy takes the argmax-only branch; one sampled row sends the same greedy rows
  through the general sampler. Their tokens and logprobs must be the same, bitwise."""
  temps = np.zeros(8, np.float32)
  fast = _sample(LOGITS, 0, 0, temps, 0, 1.0)
  temps[5] = 1.0
  general = _sample(LOGITS, 0, 0, temps, 0, 1.0)
  greedy = np.arange(8) != 5
  for a, b in zip(fast, general):
    np.testing.assert_array_equal(a[greedy], b[greedy])


def test_greedy_rows_beside_sampled_rows_take_the_argmax_of_tied_logits():
  """One sampled row sends every row through the general sampler, where temperature 0 must
  still be the argmax, not a draw at a tiny temperature: greedy rows whose top two logits are
  tied take the lower id, rows whose top two are one float32 step apart take the larger (put at
  the higher id, so the tie rule alone would get it wrong), at any seed and position, with the
  model's logprob. A draw would pick the other id of the pair about half the time."""
  rng = np.random.default_rng(3)
  r = 256
  logits_RxV = rng.normal(size=(r, V)).astype(np.float32)  # sampled rows: drawn as they are
  temps = np.where(np.arange(r) % 2 == 1, 1.0, 0.0).astype(np.float32)
  greedy = np.flatnonzero(temps == 0)
  want = np.zeros(r, np.int64)
  for n, i in enumerate(greedy):
    lo, hi = np.sort(rng.choice(V, 2, replace=False))
    logits_RxV[i] -= 4.0  # every other logit well below the pair
    logits_RxV[i, lo] = 3.0
    logits_RxV[i, hi] = 3.0 if n % 2 == 0 else np.nextafter(np.float32(3.0), np.float32(4.0))
    want[i] = lo if n % 2 == 0 else hi
  seeds, positions = rng.integers(0, 2**31, r), rng.integers(0, 4096, r)
  toks, lps = _sample(logits_RxV, seeds, positions, temps, 0, 1.0)
  np.testing.assert_array_equal(toks[greedy], want[greedy])
  x = logits_RxV[greedy].astype(np.float64)
  ls = x - x.max(-1, keepdims=True)
  ls -= np.log(np.exp(ls).sum(-1, keepdims=True))
  np.testing.assert_allclose(lps[greedy], ls[np.arange(len(greedy)), want[greedy]], atol=1e-5)
  assert len(set(toks[temps > 0])) > V // 2  # the sampled rows did draw


def test_a_row_samples_the_same_in_any_batch():
  seeds, pos = np.arange(8) + 11, np.arange(8) * 3
  toks, lps = _sample(LOGITS, seeds, pos, 1.0, 10, 0.9)
  for i in range(8):
    alone, alone_lp = _sample(np.tile(LOGITS[i:i + 1], (3, 1)), seeds[i], pos[i], 1.0, 10, 0.9)
    assert (alone == toks[i]).all() and (alone_lp == lps[i]).all()
  perm = np.random.default_rng(1).permutation(8)
  toks_p, _ = _sample(LOGITS[perm], seeds[perm], pos[perm], 1.0, 10, 0.9)
  np.testing.assert_array_equal(toks_p, toks[perm])


def test_filters():
  row = np.tile(LOGITS[:1], (400, 1))
  order = np.argsort(-LOGITS[0])
  toks, _ = _sample(row, np.arange(400), 0, 1.0, 3, 1.0)  # 400 keys, top-3
  assert set(toks) == set(order[:3])
  toks, _ = _sample(row, np.arange(400), 0, 1.0, 1, 1.0)  # top-1 is greedy
  assert set(toks) == {order[0]}
  toks, _ = _sample(row, np.arange(400), 0, 1.0, 0, 1e-6)  # tiny nucleus is greedy
  assert set(toks) == {order[0]}
  p = np.exp(LOGITS[0]) / np.exp(LOGITS[0]).sum()
  n = int(np.searchsorted(np.cumsum(p[order]), 0.5) + 1)  # smallest prefix with mass >= 0.5
  toks, _ = _sample(row, np.arange(400), 0, 1.0, 0, 0.5)
  assert set(toks) <= set(order[:n]) and len(set(toks)) > 1
  toks2, _ = _sample(row, np.arange(400), 1, 1.0, 0, 0.5)  # another position, other draws
  assert (toks2 != toks).any()


def test_clock_modes():
  cfg = ml_collections.ConfigDict(dict(mode="cost_model", profile="",
                                       coef=dict(fixed=1.0, decode_rows=0.5, expert_rows=0.25)))
  c = clock_lib.Clock(cfg)
  feats = dict.fromkeys(clock_lib.FEATURES, 0) | dict(fixed=1, decode_rows=2, expert_rows=4)
  assert c.step_duration(feats, wall_s=99.0) == 3.0
  cfg.mode = "measured"
  assert clock_lib.Clock(cfg).step_duration(feats, wall_s=0.125) == 0.125
  with pytest.raises(ValueError, match="clock.mode='wall'"):
    cfg.mode = "wall"
    clock_lib.Clock(cfg)
  cfg.update(mode="cost_model", profile="auto")  # a profile is resolved first (run.make_clock)
  with pytest.raises(ValueError, match="resolve it first"):
    clock_lib.Clock(cfg)


def test_fixed_shape_expert_rows_count_every_flat_token():
  """`gather` fills E x capacity rows per MoE layer, and a dropless capacity is the step's flat
  token count T = B + P x C (padding included), worked out by hand for one step shape."""
  cfg = serve_default.get_config("size=tiny")
  cfg.model.router.update(dispatch="gather", capacity_scope="none")
  m = cfg.model
  feats = step_cost.StepCost(cfg).features((4, 2, 8), 16, np.zeros((0, m.num_experts)))
  assert feats["expert_rows"] == transformer.num_moe_layers(m) * m.num_experts * (4 + 2 * 8)
  assert feats["prefill_tokens"] == 16 and feats["prefill_kv"] == 16 * 16
