"""Clock calibration: the fit recovers a known linear step cost, scores only held-out steps, and
whole runs compare metric by metric."""
import numpy as np
import pytest

from moe_serve.serving.clock import calibrate
from moe_serve.serving.clock import running as clock_lib

_COEF = dict(fixed=2e-3, decode_rows=3e-5, prefill_tokens=2e-5, decode_kv=4e-8, prefill_kv=1e-8,
             capacity_pairs=1e-6, expert_rows=5e-7, a2a_rows=0.0)


def _log(num_steps=40, seed=0):
  """Steps with varied shapes, kv_len and expert rows; wall times exactly linear in them."""
  rng = np.random.default_rng(seed)
  steps, wall = [], []
  for _ in range(num_steps):
    b, p, c = int(rng.choice([8, 16, 32])), int(rng.integers(0, 3)), int(rng.choice([16, 64]))
    kv = int(rng.choice([64, 128, 256]))
    scope_ranks = bool(rng.integers(0, 2))  # a `batch` step ranks its pairs, `none` does not
    feats = dict(fixed=1, decode_rows=b, prefill_tokens=p * c, decode_kv=b * kv,
                 prefill_kv=p * c * kv, capacity_pairs=scope_ranks * 8 * (b + p * c),
                 expert_rows=int(rng.integers(0, 4000)), a2a_rows=0)
    steps.append({"cost": feats})
    wall.append({"step_s": sum(_COEF[f] * v for f, v in feats.items())})
  return steps, wall


def test_recovers_a_linear_cost_exactly():
  steps, wall = _log()
  coef, stats = calibrate.fit_steps(steps, wall, holdout_every=4)
  assert (stats["fit_steps"], stats["heldout_steps"]) == (30, 10)
  assert coef == pytest.approx(_COEF, rel=1e-6, abs=1e-12)
  assert stats["heldout_abs_err_p90_s"] < 1e-9


def test_error_is_measured_on_held_out_steps_only():
  steps, wall = _log()
  for i in range(3, len(wall), 4):  # every 4th step is held out: slow it down by 1 ms
    wall[i]["step_s"] += 1e-3
  coef, stats = calibrate.fit_steps(steps, wall, holdout_every=4)
  # The fit never saw the slowed steps, so it still finds the true cost and misses each by 1 ms.
  assert coef["expert_rows"] == pytest.approx(_COEF["expert_rows"], rel=1e-6)
  assert stats["heldout_abs_err_median_s"] == pytest.approx(1e-3, rel=1e-6)


def test_a_feature_that_never_varies_apart_gets_zero_and_negative_ones_are_dropped():
  # One decode bucket: decode_rows is 16 times `fixed` in every step, so `fixed` takes it all.
  rng = np.random.default_rng(1)
  feats = [dict.fromkeys(clock_lib.FEATURES, 0) | dict(fixed=1, decode_rows=16,
                                                       expert_rows=int(r))
           for r in rng.integers(0, 1000, 50)]
  y = [1e-3 + 16 * 1e-5 + 1e-6 * f["expert_rows"] for f in feats]
  coef = clock_lib.fit(feats, y)
  assert coef["decode_rows"] == 0 and coef["a2a_rows"] == 0
  assert coef["fixed"] == pytest.approx(1e-3 + 16e-5) and coef["expert_rows"] == pytest.approx(1e-6)
  # A cost that falls with more work is not a cost: that coefficient is dropped, not negative.
  coef = clock_lib.fit(feats, [5e-3 - 1e-7 * f["expert_rows"] for f in feats])
  assert coef["expert_rows"] == 0 and min(coef.values()) >= 0


def test_whole_runs_compare_with_the_median_of_measured_rounds():
  def summary(scale):
    stats = lambda v: dict(mean=v, median=v, p90=v, p99=2 * v)
    return dict(output_throughput=100.0 / scale, ttft_ms=stats(10.0 * scale),
                tpot_ms=stats(5.0 * scale), e2el_ms=stats(300.0 * scale))
  rounds = [summary(0.8), summary(1.0), summary(1.1)]  # median: the 1.0 round
  got, noise = calibrate.compare_to_rounds(rounds, summary(1.25))
  assert got["throughput"] == pytest.approx((100.0, 80.0, -0.2))
  assert got["TTFT p99"] == pytest.approx((20.0, 25.0, 0.25))
  assert noise["TTFT p50"] == pytest.approx(0.2) and noise["throughput"] == pytest.approx(0.25)
  assert set(got) == set(noise) == {label for _, _, label in calibrate.RUN_METRICS}
  empty = dict(summary(1.0), tpot_ms=dict(mean=None, median=None, p90=None, p99=None))
  got, noise = calibrate.compare_to_rounds([empty], summary(1.0))
  assert got["TPOT p50"] == (None, 5.0, None) and noise["TPOT p50"] is None


def test_overrides_are_config_flags():
  text = calibrate.overrides({"fixed": 0.00123456, "expert_rows": 2e-07})
  assert text == "--config.clock.profile= --config.clock.coef.fixed=0.001235 " \
                 "--config.clock.coef.expert_rows=2e-07"
