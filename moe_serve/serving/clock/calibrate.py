"""Fits the cost_model clock to measured steps and scores it on held-out steps and whole runs.

A run in `measured` mode logs each step's features (`cost` in steps.jsonl,
serving/clock/step_cost.py)
and its wall time in wall.jsonl. `fit_steps` fits the coefficients on steps (non-negative least
squares, clock.fit) and scores every `holdout_every`-th step it did not see; `compare_to_rounds`
scores a whole `cost_model` run against measured runs of the same workload on the metrics a
serving simulator is judged by (throughput, TTFT/TPOT/E2EL p50 and p99).
"""
import numpy as np

from moe_serve.serving.clock import running as clock_lib

# (summary key, statistic, label) of the whole-run metrics compared; a p99 is allowed twice the
# error of a median or a throughput (issue 17's targets; docs/serving.md, Clock profiles).
RUN_METRICS = (("output_throughput", None, "throughput"),
               ("ttft_ms", "median", "TTFT p50"), ("ttft_ms", "p99", "TTFT p99"),
               ("tpot_ms", "median", "TPOT p50"), ("tpot_ms", "p99", "TPOT p99"),
               ("e2el_ms", "median", "E2EL p50"), ("e2el_ms", "p99", "E2EL p99"))


def step_features(steps):
  return [s["cost"] for s in steps]


def fit_steps(steps, wall, holdout_every=4):
  """Returns (coef {feature: s}, stats): held-out |error| median/p90 (seconds and relative)."""
  feats = step_features(steps)
  y = np.array([w["step_s"] for w in wall], np.float64)
  held = np.arange(len(y)) % holdout_every == holdout_every - 1
  coef = clock_lib.fit([f for f, h in zip(feats, held) if not h], y[~held])
  err = np.abs(clock_lib.predict(coef, [f for f, h in zip(feats, held) if h]) - y[held])
  rel = err / y[held]
  return coef, dict(fit_steps=int((~held).sum()), heldout_steps=int(held.sum()),
                    heldout_abs_err_median_s=float(np.median(err)),
                    heldout_abs_err_p90_s=float(np.percentile(err, 90)),
                    heldout_rel_err_median=float(np.median(rel)),
                    heldout_rel_err_p90=float(np.percentile(rel, 90)),
                    heldout_step_s_median=float(np.median(y[held])))


def _metric(summary, key, stat):
  value = summary[key] if stat is None else (summary[key] or {}).get(stat)
  return None if value is None else float(value)


def compare_to_rounds(measured, virtual):
  """A cost_model run against several measured runs of the same workload: ({label: (median of
  the measured, cost_model, relative error)}, {label: the largest |measured / median - 1|})."""
  metrics, noise = {}, {}
  for key, stat, label in RUN_METRICS:
    values = [v for v in (_metric(m, key, stat) for m in measured) if v is not None]
    b = _metric(virtual, key, stat)
    a = float(np.median(values)) if values else None
    metrics[label] = (a, b, (b - a) / a if a and b is not None else None)
    noise[label] = max(abs(v / a - 1) for v in values) if a else None
  return metrics, noise


def overrides(coef):
  """The --config flags that set these coefficients without a profile."""
  return "--config.clock.profile= " + " ".join(f"--config.clock.coef.{k}={v:.4g}"
                                               for k, v in coef.items())
