"""Config parsing and validation: the one place that decides whether a config is usable.

Every check raises `ConfigError` naming the field, the bad value and what would be valid, and runs
before anything is compiled. Other modules add their checks here, not at their call sites.
"""
import ast
import math

import ml_collections

ROUTER_KINDS = ("topk", "expert_choice", "soft", "hash")
CAPACITY_SCOPES = ("batch", "group", "sequence", "none")
PRIORITIES = ("position", "token", "score")
DISPATCH_BACKENDS = ("einsum", "gather", "ragged")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
  """A config field holds a value the framework cannot use."""


def parse_arg(arg, **defaults):
  """Parses a big_vision style config arg `"size=tiny,experts=8"` over typed defaults.

  Values are converted to the type of their default (bool accepts true/false/1/0); keys not in
  `defaults` are rejected so a typo never passes silently.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    key, sep, raw = item.partition("=")
    if not sep:
      raise ConfigError(f"config arg item {item!r} is not key=value; known keys: {sorted(defaults)}")
    if key not in defaults:
      raise ConfigError(f"unknown config arg {key!r}; known keys: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"config arg {key}={raw!r} is not a bool; use true or false")
      value = raw.lower() in ("true", "1")
    elif kind in (int, float):
      try:
        value = kind(ast.literal_eval(raw))
      except (ValueError, SyntaxError) as e:
        raise ConfigError(f"config arg {key}={raw!r} is not of type {kind.__name__}") from e
    else:
      value = raw
    out[key] = value
  return out


def _positive(cfg, prefix, *names):
  for name in names:
    value = cfg[name]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f"{prefix}.{name}={value!r} must be a positive integer")


def _choice(value, field, valid):
  if value not in valid:
    raise ConfigError(f"{field}={value!r} is not one of {list(valid)}")


def _divisors(n):
  return [d for d in range(1, n + 1) if n % d == 0]


def validate_model(m):
  """Checks a `config.model` ConfigDict; raises ConfigError on the first bad field."""
  _positive(m, "model", "vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
            "head_dim", "d_ff", "num_experts", "d_ff_expert", "moe_every", "max_len")
  if m.num_heads % m.num_kv_heads:
    raise ConfigError(
        f"model.num_heads={m.num_heads} must be divisible by model.num_kv_heads={m.num_kv_heads}; "
        f"valid num_kv_heads: {_divisors(m.num_heads)}")
  if m.head_dim % 2:
    raise ConfigError(f"model.head_dim={m.head_dim} must be even for rotary embeddings")
  if m.moe_every > m.num_layers:
    raise ConfigError(
        f"model.moe_every={m.moe_every} is out of range: use 1..model.num_layers={m.num_layers} "
        "(layer i is MoE when (i + 1) % moe_every == 0)")
  _choice(m.dtype, "model.dtype", DTYPES)
  if not m.rope_theta > 0:
    raise ConfigError(f"model.rope_theta={m.rope_theta} must be > 0")
  validate_router(m.router, m.num_experts)


def validate_router(r, num_experts):
  """Checks `config.model.router` against the number of experts."""
  _choice(r.kind, "model.router.kind", ROUTER_KINDS)
  _choice(r.capacity_scope, "model.router.capacity_scope", CAPACITY_SCOPES)
  _choice(r.priority, "model.router.priority", PRIORITIES)
  _choice(r.dispatch, "model.router.dispatch", DISPATCH_BACKENDS)
  _positive(r, "model.router", "k", "group_size")
  if r.k > num_experts:
    raise ConfigError(
        f"model.router.k={r.k} exceeds model.num_experts={num_experts}; use 1..{num_experts}")
  if not isinstance(r.min_capacity, int) or r.min_capacity < 0:
    raise ConfigError(f"model.router.min_capacity={r.min_capacity!r} must be an integer >= 0")
  for name in ("capacity_factor_prefill", "capacity_factor_decode"):
    value = r[name]
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ConfigError(f"model.router.{name}={value!r} must be a finite number > 0")
  for name in ("jitter", "lb_loss_weight", "z_loss_weight"):
    if not r[name] >= 0:
      raise ConfigError(f"model.router.{name}={r[name]!r} must be >= 0")
  validate_routing_rules(r)
  if r.dispatch == "ragged" and r.capacity_scope != "none":
    raise ConfigError(
        f"model.router.dispatch='ragged' is dropless and needs capacity_scope='none', "
        f"got capacity_scope={r.capacity_scope!r}; use dispatch='einsum' or 'gather' to drop")


def validate_routing_rules(r):
  """Checks the router fields that routing.py relies on beyond their types and ranges."""
  for name in ("capacity_factor_prefill", "capacity_factor_decode"):
    milli = r[name] * 1000
    if abs(milli - round(milli)) > 1e-6:
      raise ConfigError(
          f"model.router.{name}={r[name]!r} must be a multiple of 0.001 (capacities are computed "
          f"exactly in thousandths); use e.g. {round(milli) / 1000}")
  if r.kind == "soft":
    raise ConfigError("model.router.kind='soft' (Soft MoE) is not implemented yet; use 'topk', "
                      "'hash' or 'expert_choice'")
  if r.kind == "expert_choice" and r.capacity_scope == "none":
    raise ConfigError("model.router.kind='expert_choice' needs a capacity (experts pick that many "
                      "tokens), got capacity_scope='none'; use 'batch', 'group' or 'sequence'")


def validate(cfg):
  """Validates a full experiment config (the parts present); returns it for chaining."""
  if "model" not in cfg:
    raise ConfigError("config has no `model` section; start from configs/base.py")
  validate_model(cfg.model)
  return cfg
