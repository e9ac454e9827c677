"""The `workload` section: generated arrivals and lengths, or a trace, and the sampling params."""
from moe_serve import files
from moe_serve.config.checks import ConfigError, boolean, choice, finite, positive

ARRIVAL_KINDS = ("poisson", "gamma", "constant", "ramp")
LENGTH_KINDS = ("fixed", "uniform", "lognormal", "list")
PROMPT_SOURCES = ("synthetic", "eval", "corpus")  # serving/stream/prompt_sources.py
TRACE_FORMATS = ("jsonl", "sharegpt", "burstgpt", "azure", "mooncake")  # docs/traces.md


def _length_dist(d, field):
  choice(d.kind, f"{field}.kind", LENGTH_KINDS)
  if d.kind == "fixed":
    positive(d, field, "value")
  elif d.kind == "list":
    if not d["values"] or any(not isinstance(v, int) or v <= 0 for v in d["values"]):
      raise ConfigError(f"{field}.values={d['values']!r} must be a non-empty list of ints > 0")
  else:
    positive(d, field, "low", "high")
    if d.low > d.high:
      raise ConfigError(f"{field}.low={d.low} > {field}.high={d.high}; swap them")
    if d.kind == "lognormal":
      finite(d.median, f"{field}.median", strict=True)
      finite(d.sigma, f"{field}.sigma")


def _count(w, name):
  if not isinstance(w[name], int) or isinstance(w[name], bool) or w[name] < 0:
    raise ConfigError(f"workload.{name}={w[name]!r} must be an integer >= 0")


def validate_workload(w, domains):
  """Checks `config.workload`; `domains` are serve.domains, which `workload.mix` must draw from.
  A trace must exist (the file is read later, line by line: serving/stream/workload.py)."""
  for name in ("num_requests", "seed"):
    _count(w, name)
  if not isinstance(w.get("trace", ""), str):
    raise ConfigError(f"workload.trace={w.trace!r} must be a path (or '' for the generator)")
  choice(w.get("prompt_source", "synthetic"), "workload.prompt_source", PROMPT_SOURCES)
  choice(w.get("trace_format", "jsonl"), "workload.trace_format", TRACE_FORMATS)
  if w.get("trace_format", "jsonl") != "jsonl" and not w.trace:
    raise ConfigError(f"workload.trace_format={w.trace_format!r} needs workload.trace=PATH")
  for name in ("time_scale", "length_scale"):
    finite(w.get(name, 1.0), f"workload.{name}", strict=True)
  cap = w.get("max_requests", 0)
  if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
    raise ConfigError(f"workload.max_requests={cap!r} must be an integer >= 0 (0: all)")
  if w.trace and not files.isfile(w.trace):
    raise ConfigError(f"workload.trace={w.trace!r} is not a file")
  boolean(w.get("skip_bad_lines", False), "workload.skip_bad_lines")
  positive(w, "workload", "num_priorities")
  choice(w.arrival.kind, "workload.arrival.kind", ARRIVAL_KINDS)
  finite(w.arrival.rate, "workload.arrival.rate", strict=True)
  if w.arrival.kind == "gamma":
    finite(w.arrival.burstiness, "workload.arrival.burstiness", strict=True)
  if w.arrival.kind == "ramp":
    finite(w.arrival.rate_end, "workload.arrival.rate_end", strict=True)
  _length_dist(w.prompt_len, "workload.prompt_len")
  _length_dist(w.output_len, "workload.output_len")
  unknown = sorted(set(w.mix) - set(domains))
  if unknown or not w.mix or any(not v >= 0 for v in w.mix.values()) or sum(w.mix.values()) <= 0:
    raise ConfigError(f"workload.mix={dict(w.mix)} must map domains of serve.domains="
                      f"{list(domains)} to weights >= 0 with a positive sum")
  finite(w.temperature, "workload.temperature")
  if not isinstance(w.top_k, int) or w.top_k < 0:
    raise ConfigError(f"workload.top_k={w.top_k!r} must be an integer >= 0 (0 is off)")
  if not 0 < w.top_p <= 1:
    raise ConfigError(f"workload.top_p={w.top_p!r} must be in (0, 1]")
  return w
