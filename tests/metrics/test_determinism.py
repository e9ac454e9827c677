"""Determinism figures of a run against its solo reference, on hand-built traces."""
import numpy as np

from moe_serve.metrics import determinism as det

V = 4


def _trace(tokens, dist_rows, routing, prompt_len=2):
  dists = np.log(np.asarray(dist_rows, np.float64)).astype(np.float32)
  logprobs = tuple(float(dists[i, t]) for i, t in enumerate(tokens))
  return det.Trace(prompt_len, tuple(tokens), logprobs, dists, np.asarray(routing))


UNIFORM = [0.25] * V
SKEW = [0.7, 0.1, 0.1, 0.1]
# 2 prompt positions + 2 fed outputs, 1 layer, k=2; -1 = dropped
ROUTING = [[[0, 1]], [[2, 3]], [[1, 0]], [[0, 2]]]


def test_identical_runs():
  solo = _trace([1, 2, 3], [UNIFORM, UNIFORM, UNIFORM], ROUTING)
  d = det.compare(solo, solo)
  assert d["identical_tokens"] and d["bitwise"] and d["first_divergence"] is None
  assert d["max_kl"] == 0.0 and d["max_abs_dlogprob"] == 0.0 and d["routing_diff_fraction"] == 0.0


def test_divergence_kl_dlogprob_and_routing():
  solo = _trace([0, 2, 3], [SKEW, UNIFORM, UNIFORM], ROUTING)
  # Position 1 diverges; position 0 has another distribution but the same argmax token.
  routing = [[[1, 0]], [[2, -1]], [[1, 0]], [[3, 3]]]  # same set, dropped, same, (after div)
  run = _trace([0, 1, 3], [UNIFORM, UNIFORM, UNIFORM], routing)
  d = det.compare(solo, run)
  assert d["first_divergence"] == 1 and not d["identical_tokens"] and not d["bitwise"]
  kl0 = sum(p * np.log(p / 0.25) for p in SKEW)  # KL(solo || run) at position 0
  np.testing.assert_allclose(d["max_kl"], kl0, rtol=1e-5)
  np.testing.assert_allclose(d["max_abs_dlogprob"], abs(np.log(0.25) - np.log(0.7)), rtol=1e-5)
  # Equal inputs: the 2 prompt positions and output 0 (fed at position 2): 1 of 3 differs.
  np.testing.assert_allclose(d["routing_diff_fraction"], 1 / 3)
  np.testing.assert_allclose(d["drop_rate"], 1 / 8)


def test_summary_counts_unique_completions():
  solo = _trace([1, 2], [UNIFORM, UNIFORM], ROUTING[:3])
  other = _trace([1, 3], [UNIFORM, UNIFORM], ROUTING[:3])
  s = det.summarize(solo, [solo, other, solo, other])
  assert s["unique_completions"] == 2 and s["agree_with_solo"] == 0.5
  assert s["first_divergence_min"] == 1 and s["repeats"] == 4


def test_length_difference_is_a_divergence():
  assert det.first_divergence((1, 2), (1, 2, 3)) == 2
  assert det.first_divergence((1, 2), (1, 2)) is None


def test_traffic_drop_rate():
  steps = [dict(decode=2, prefill_tokens=2, drops=[1, 0]), dict(decode=4, prefill_tokens=0,
                                                                drops=[2, 1])]
  # 8 real tokens x k=2 x 2 layers = 32 pairs, 4 dropped
  assert det.traffic_drop_rate(steps, 2, 2) == 4 / 32
  assert det.traffic_drop_rate([dict(decode=1, prefill_tokens=0, drops=None)], 2, 2) is None
