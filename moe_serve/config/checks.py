"""ConfigError and the small checks every section's validator is made of.

Each check raises `ConfigError` naming the field, the bad value and what would be valid.
"""
import math


class ConfigError(ValueError):
  """A config field holds a value the framework cannot use."""


def positive(cfg, prefix, *names):
  """ConfigError unless every `cfg[name]` is an int > 0 (bools are not ints here)."""
  for name in names:
    value = cfg[name]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f"{prefix}.{name}={value!r} must be a positive integer")


def choice(value, field, valid):
  """ConfigError unless `value` is one of `valid` (a section's option list)."""
  if value not in valid:
    raise ConfigError(f"{field}={value!r} is not one of {list(valid)}")


def finite(value, field, low=0.0, strict=False):
  """ConfigError unless `value` is a finite number >= `low` (> `low` with `strict`)."""
  ok = isinstance(value, (int, float)) and math.isfinite(value) and (
      value > low if strict else value >= low)
  if not ok:
    raise ConfigError(f"{field}={value!r} must be a finite number {'>' if strict else '>='} {low}")


def boolean(value, field):
  """ConfigError unless `value` is True or False."""
  if not isinstance(value, bool):
    raise ConfigError(f"{field}={value!r} must be true or false")


def divisors(n):
  """The divisors of `n`, ascending (the valid sizes an error message offers)."""
  return [d for d in range(1, n + 1) if n % d == 0]


def require_options(section, name, defaults):
  """ConfigError naming the first option of `defaults` missing from `section` (a late option an
  older config lacks), with its default."""
  for key, value in defaults.items():
    if key not in section:
      raise ConfigError(f"{name}.{key} is missing; start from configs/base.py (default "
                        f"{value!r})")
