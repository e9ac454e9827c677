"""Virtual time for the engine: `measured` (wall time of each step) or `cost_model`.

`cost_model` advances by sum_f coef[f] * feature[f] over the step-cost features of
serving/clock/step_cost.py (what the compiled step computes: decode and prefill tokens, attention
reads, expert rows as the dispatch backend runs them, all-to-all rows). The coefficients come
from a clock profile (serving/clock/profiles.py) or `clock.coef`. It never reads a wall clock, so a run
is reproducible bit for bit. `fit` finds coefficients from measured steps.

In a multi-process run every process must take the same step durations, or their schedules (and
so their jitted steps) drift apart: `measured` then uses the maximum of the processes' wall
times, exchanged every step (parallel/spmd.py); `cost_model` needs no exchange.
"""
import numpy as np

from moe_serve import config as config_lib
from moe_serve.parallel import spmd
from moe_serve.serving.clock import step_cost

MODES = config_lib.CLOCK_MODES
NO_PROFILE = "clock.coef (no profile)"  # the source of coefficients given without a profile
FEATURES = step_cost.FEATURES


class Clock:
  """Holds `now` (seconds) and turns a step's features and wall time into its duration.

  `coef` ({feature: seconds per unit}): the coefficients, default `clock_cfg.coef`
  (profiles.resolve gives a profile's); `source`: where they came from, for the summary.
  """

  def __init__(self, clock_cfg, coef=None, source=NO_PROFILE):
    self.mode = clock_cfg.mode
    if self.mode not in MODES:
      raise ValueError(f"clock.mode={self.mode!r} is not one of {list(MODES)}")
    if coef is None:
      if self.mode == "cost_model" and clock_cfg.get("profile", ""):
        raise ValueError(f"clock.profile={clock_cfg.profile!r}: resolve it first "
                         "(serving/profiles.resolve, as run.build_engine does)")
      coef = clock_cfg.get("coef", {})
    self.coef = np.array([float(coef.get(f, 0.0)) for f in FEATURES])
    self.source = source if self.mode == "cost_model" else "measured wall time"
    self.now = 0.0

  def step_duration(self, features, wall_s):
    if self.mode == "measured":
      return spmd.agreed_max(wall_s)  # the one value every process uses (itself with one)
    return float(self.coef @ np.array([features[f] for f in FEATURES], np.float64))

  def advance(self, dt):
    self.now += dt
    return self.now

  def jump_to(self, t):
    """Idle engine: time moves on to the next arrival."""
    self.now = max(self.now, t)


def design_matrix(features):
  """[steps, len(FEATURES)] from a list of feature dicts."""
  return np.array([[f[name] for name in FEATURES] for f in features], np.float64).reshape(
      -1, len(FEATURES))


def independent_columns(x):
  """Indices of the columns of `x`, in FEATURES order, that are not linear combinations of the
  columns kept before them (scaled to unit maximum, so units do not matter)."""
  scale = np.abs(x).max(0)
  xs = x / np.where(scale > 0, scale, 1.0)
  keep = []
  for i in range(x.shape[1]):
    if scale[i] > 0 and np.linalg.matrix_rank(xs[:, keep + [i]], tol=1e-9) == len(keep) + 1:
      keep.append(i)
  return keep or [0]


def fit(features, wall_s):
  """Least-squares coefficients {feature: s}, each >= 0 (non-negative least squares by hand:
  refit without any coefficient that comes out negative, so the model never predicts a step
  getting cheaper with more work). A feature that never varies apart from those before it in
  FEATURES (`decode_rows` with one decode bucket: a constant like `fixed`; `a2a_rows` without a
  mesh) gets 0: its cost is in the earlier ones, for the shapes that were measured."""
  x = design_matrix(features)
  y = np.asarray(wall_s, np.float64)
  active = independent_columns(x)
  while True:
    coef_a, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
    if (coef_a >= 0).all() or len(active) == 1:
      break
    active = [a for a, c in zip(active, coef_a) if c >= 0] or [0]
  coef = np.zeros(len(FEATURES))
  coef[active] = np.maximum(coef_a, 0)
  return dict(zip(FEATURES, coef.tolist()))


def predict(coef, features):
  return design_matrix(features) @ np.array([coef.get(f, 0.0) for f in FEATURES])
