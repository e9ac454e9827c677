"""The `clock` section of a serving config: measured or cost_model time, and its coefficients."""
from moe_serve.config.checks import ConfigError, choice, finite

CLOCK_MODES = ("measured", "cost_model")


def validate_clock(c):
  """Checks `config.clock` (serving/clock/running.py; the profile it names is checked when
  loaded)."""
  choice(c.mode, "clock.mode", CLOCK_MODES)
  for name in ("fixed_s", "per_token_s", "per_kv_s"):
    if name in c:
      raise ConfigError(f"clock.{name} is gone: step costs now come from a clock profile "
                        "(clock.profile, docs/serving.md) or clock.coef.<feature>")
  if not isinstance(c.get("profile", ""), str):
    raise ConfigError(f"clock.profile={c.profile!r} must be 'auto', a path, or '' (clock.coef)")
  coef = c.get("coef", {})
  for name in coef:
    finite(coef[name], f"clock.coef.{name}")
  if c.mode == "cost_model" and not c.get("profile", "") and sum(coef.values()) <= 0:
    raise ConfigError("clock.mode='cost_model' with clock.profile='' needs a positive "
                      "clock.coef (all are 0); make a profile with scripts/calibrate.py")
  return c
