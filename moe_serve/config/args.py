"""The command line's side of configs: `get_config(arg)` strings and `--config.x.y` field names."""
import ast
import difflib

import ml_collections

from moe_serve.config.checks import ConfigError


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


def unknown_field(cfg, dotted):
  """None if `dotted` (e.g. "serve.max_num_seqs") names a field of `cfg`, else a message that
  names the full path and the nearest valid names."""
  node, done = cfg, []
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      valid = sorted(node.keys()) if hasattr(node, "keys") else []
      where = ".".join(done) or "the config"
      near = difflib.get_close_matches(part, valid, n=3, cutoff=0.5)
      hint = f"; did you mean {', '.join('.'.join(done + [n]) for n in near)}?" if near else ""
      if not valid:
        return f"unknown config field {dotted!r}: {where} is a value, not a section"
      listing = "" if near else f" (fields of {where}: {valid})"
      return f"unknown config field {dotted!r}: {where} has no field {part!r}{hint}{listing}"
    node = node[part]
    done.append(part)
  return None
