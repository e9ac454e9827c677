"""Virtual time for the engine: `measured` (wall time of each step) or `cost_model`.

`cost_model` advances by fixed_s + per_token_s * tokens + per_kv_s * attended_kv, where `tokens`
is the step's computed token positions (B + P * C: fixed shapes compute their padding too) and
`attended_kv` the keys the real tokens attend to (sum of position + 1). It never reads a wall
clock, so a run is reproducible bit for bit. `fit` finds the coefficients from measured steps.

In a multi-process run every process must take the same step durations, or their schedules (and
so their jitted steps) drift apart: `measured` then uses the maximum of the processes' wall
times, exchanged every step (parallel/spmd.py); `cost_model` needs no exchange.
"""
import numpy as np

from moe_serve import config as config_lib
from moe_serve.parallel import spmd

MODES = config_lib.CLOCK_MODES
FEATURES = ("fixed", "tokens", "attended_kv")


class Clock:
  """Holds `now` (seconds) and turns a step's features and wall time into its duration."""

  def __init__(self, clock_cfg):
    self.mode = clock_cfg.mode
    if self.mode not in MODES:
      raise ValueError(f"clock.mode={self.mode!r} is not one of {list(MODES)}")
    self.coef = np.array([clock_cfg.fixed_s, clock_cfg.per_token_s, clock_cfg.per_kv_s])
    self.now = 0.0

  def step_duration(self, tokens, attended_kv, wall_s):
    if self.mode == "measured":
      return spmd.agreed_max(wall_s)  # the one value every process uses (itself with one)
    return float(self.coef @ np.array([1.0, tokens, attended_kv]))

  def advance(self, dt):
    self.now += dt
    return self.now

  def jump_to(self, t):
    """Idle engine: time moves on to the next arrival."""
    self.now = max(self.now, t)


def design_matrix(tokens, attended_kv):
  tokens = np.asarray(tokens, np.float64)
  return np.stack([np.ones_like(tokens), tokens, np.asarray(attended_kv, np.float64)], 1)


def fit(tokens, attended_kv, wall_s):
  """Least-squares coefficients (fixed_s, per_token_s, per_kv_s), each clipped at >= 0.

  Non-negative least squares by hand: refit without any coefficient that comes out negative, so
  the model never predicts a step getting cheaper with more work.
  """
  x = design_matrix(tokens, attended_kv)
  y = np.asarray(wall_s, np.float64)
  active = [0, 1, 2]
  while True:
    coef_a, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
    if (coef_a >= 0).all() or len(active) == 1:
      break
    active = [a for a, c in zip(active, coef_a) if c >= 0] or [0]
  coef = np.zeros(3)
  coef[active] = np.maximum(coef_a, 0)
  return coef


def predict(coef, tokens, attended_kv):
  return design_matrix(tokens, attended_kv) @ np.asarray(coef)
