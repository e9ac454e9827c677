"""Clock calibration: recovers a known linear cost and scores only the held-out steps."""
import numpy as np
import pytest

from moe_serve.serving import calibrate

_COEF = (2e-3, 3e-5, 4e-7)  # fixed_s, per_token_s, per_kv_s


def _log(num_steps=16, seed=0):
  """Steps with varied buckets and attended KV, and wall times exactly linear in them."""
  rng = np.random.default_rng(seed)
  steps, wall = [], []
  for _ in range(num_steps):
    b, p, c = int(rng.integers(1, 17)), int(rng.integers(0, 3)), int(rng.choice([16, 64]))
    kv = int(rng.integers(0, 4000))
    steps.append({"bucket": [b, p, c], "attended_kv": kv})
    wall.append({"step_s": _COEF[0] + _COEF[1] * (b + p * c) + _COEF[2] * kv})
  return steps, wall


def test_features_count_decode_rows_plus_prefill_chunks():
  tokens, kv = calibrate.features([{"bucket": [4, 2, 16], "attended_kv": 7},
                                   {"bucket": [1, 0, 64], "attended_kv": 0}])
  assert tokens.tolist() == [4 + 2 * 16, 1] and kv.tolist() == [7, 0]


def test_recovers_a_linear_cost_exactly():
  steps, wall = _log()
  got = calibrate.calibrate(steps, wall, holdout_every=4)
  assert (got["fit_steps"], got["heldout_steps"]) == (12, 4)
  assert [got["fixed_s"], got["per_token_s"], got["per_kv_s"]] == pytest.approx(_COEF, rel=1e-6)
  assert got["heldout_abs_err_p90_s"] < 1e-9


def test_error_is_measured_on_held_out_steps_only():
  steps, wall = _log()
  for i in range(3, len(wall), 4):  # every 4th step is held out: slow it down by 1 ms
    wall[i]["step_s"] += 1e-3
  got = calibrate.calibrate(steps, wall, holdout_every=4)
  # The fit never saw the slowed steps, so it still finds the true cost and misses each by 1 ms.
  assert got["per_token_s"] == pytest.approx(_COEF[1], rel=1e-6)
  assert got["heldout_abs_err_median_s"] == pytest.approx(1e-3, rel=1e-6)
  assert got["heldout_abs_err_p90_s"] == pytest.approx(1e-3, rel=1e-6)


def test_overrides_are_config_flags():
  text = calibrate.overrides({"fixed_s": 0.00123456, "per_token_s": 2e-05, "per_kv_s": 0.0})
  assert text == "--config.clock.fixed_s=0.001235 --config.clock.per_token_s=2e-05 " \
                 "--config.clock.per_kv_s=0"
