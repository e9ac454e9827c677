"""Fits the cost_model clock to measured steps and reports how well it predicts held-out steps.

A run in `measured` mode logs each step's features (computed tokens B + P * C, attended KV) in
steps.jsonl and its wall time in wall.jsonl. Every `holdout_every`-th step is held out; the rest
fit (fixed_s, per_token_s, per_kv_s) by non-negative least squares (clock.fit).
"""
import numpy as np

from moe_serve.serving import clock as clock_lib


def features(steps):
  tokens = np.array([b + p * c for b, p, c in (s["bucket"] for s in steps)], np.float64)
  return tokens, np.array([s["attended_kv"] for s in steps], np.float64)


def calibrate(steps, wall, holdout_every=4):
  """Returns a dict: coefficients, held-out |error| median/p90 (seconds and relative), counts."""
  tokens, kv = features(steps)
  y = np.array([w["step_s"] for w in wall], np.float64)
  held = np.arange(len(y)) % holdout_every == holdout_every - 1
  coef = clock_lib.fit(tokens[~held], kv[~held], y[~held])
  err = np.abs(clock_lib.predict(coef, tokens[held], kv[held]) - y[held])
  rel = err / y[held]
  return dict(fixed_s=float(coef[0]), per_token_s=float(coef[1]), per_kv_s=float(coef[2]),
              fit_steps=int((~held).sum()), heldout_steps=int(held.sum()),
              heldout_abs_err_median_s=float(np.median(err)),
              heldout_abs_err_p90_s=float(np.percentile(err, 90)),
              heldout_rel_err_median=float(np.median(rel)),
              heldout_rel_err_p90=float(np.percentile(rel, 90)),
              heldout_step_s_median=float(np.median(y[held])))


def overrides(result):
  return " ".join(f"--config.clock.{k}={result[k]:.4g}" for k in ("fixed_s", "per_token_s",
                                                                   "per_kv_s"))
