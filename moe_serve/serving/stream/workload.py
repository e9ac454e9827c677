"""Seeded request streams: arrival processes, length distributions, domain mixes, trace replay.

Everything is a pure function of the workload config and its seed. Each request draws its own
prompt from a `PromptSource` with a generator seeded by (workload seed, request index), so adding
requests or changing the arrival process never changes the prompts of the others.
"""
import json
import math
import zlib
from typing import Protocol

import numpy as np

from moe_serve import config as config_lib
from moe_serve import files
from moe_serve.data import tokenizer
from moe_serve.serving.stream.request import Request, SamplingParams

ARRIVALS = config_lib.ARRIVAL_KINDS
LENGTHS = config_lib.LENGTH_KINDS


class TraceError(ValueError):
  """A trace line cannot be turned into a request; the message names the line."""


def not_utf8(text, what):
  """None if `text` is UTF-8 text, else why not: the lone surrogate JSON lets through (the escape
  "\\ud800", or a byte that is not UTF-8 read with errors="surrogateescape"), which no tokenizer
  can encode."""
  try:
    text.encode("utf-8")
    return None
  except UnicodeEncodeError as e:
    return (f"{what} is not UTF-8 text: lone surrogate U+{ord(text[e.start]):04X} at character "
            f"{e.start} (a \\u{ord(text[e.start]):04x} escape, or a byte that is not UTF-8)")


class PromptSource(Protocol):
  """domain, target length, generator -> prompt token ids (BOS first). Lengths are a target."""

  def __call__(self, domain: str, length: int, rng: np.random.Generator) -> list[int]:
    ...


class SyntheticPromptSource:
  """Random byte tokens from a per-domain alphabet, so domains differ but need no corpus.

  The alphabet of a domain is a contiguous byte range picked from a stable hash of its name
  (crc32, not Python's per-process `hash`).
  """

  def __init__(self, alphabet_size=32, tok=tokenizer.BYTES):
    self.alphabet_size = alphabet_size
    self.tok = tok  # the served model's tokenizer (to decode; the ids are bytes + OFFSET)

  def __call__(self, domain, length, rng):
    lo = 32 + zlib.crc32(domain.encode()) % (127 - 32 - self.alphabet_size)  # printable ASCII
    body = rng.integers(lo, lo + self.alphabet_size, size=max(length - 1, 0))
    return [tokenizer.BOS] + [int(b) + tokenizer.OFFSET for b in body]


def arrival_times(arrival, n, rng):
  """`n` arrival times (seconds, from 0) for an `arrival` ConfigDict (kind, rate, ...)."""
  kind, rate = arrival.kind, float(arrival.rate)
  if kind == "constant":
    return np.arange(n) / rate
  if kind == "poisson":
    gaps = rng.exponential(1.0 / rate, size=n)
  elif kind == "gamma":
    # Shape 1/b and scale b/rate keep the mean gap at 1/rate; b = 1 is Poisson, b > 1 burstier.
    b = float(arrival.burstiness)
    gaps = rng.gamma(1.0 / b, b / rate, size=n)
  elif kind == "ramp":
    # Rate rises linearly from `rate` to `rate_end` over the n requests (inverse-rate gaps).
    rates = np.linspace(rate, float(arrival.rate_end), n)
    gaps = rng.exponential(1.0, size=n) / rates
  else:
    raise ValueError(f"arrival.kind={kind!r} is not one of {list(ARRIVALS)}")
  gaps[0] = 0.0  # the first request opens the run
  return np.cumsum(gaps)


def draw_length(dist, rng):
  """One length from a `dist` ConfigDict (kind fixed|uniform|lognormal|list); always >= 1."""
  kind = dist.kind
  if kind == "fixed":
    value = dist.value
  elif kind == "uniform":
    value = rng.integers(dist.low, dist.high + 1)
  elif kind == "lognormal":
    value = round(float(dist.median) * math.exp(float(dist.sigma) * rng.standard_normal()))
    value = min(max(value, dist.low), dist.high)
  elif kind == "list":
    value = rng.choice(np.asarray(dist["values"]))  # `dist.values` is ConfigDict's method
  else:
    raise ValueError(f"length kind={kind!r} is not one of {list(LENGTHS)}")
  return max(int(value), 1)


def generate(wl, prompt_source: PromptSource):
  """Requests for a `workload` ConfigDict (arrival, prompt_len, output_len, mix, sampling)."""
  times = arrival_times(wl.arrival, wl.num_requests, np.random.default_rng(wl.seed))
  domains = list(wl.mix.keys())
  weights = np.asarray([float(wl.mix[d]) for d in domains])
  out = []
  for i in range(wl.num_requests):
    r = np.random.default_rng([wl.seed, i])  # everything about request i but its arrival
    domain = domains[r.choice(len(domains), p=weights / weights.sum())]
    prompt = prompt_source(domain, draw_length(wl.prompt_len, r), r)
    sp = SamplingParams(float(wl.temperature), int(wl.top_k), float(wl.top_p),
                        seed=(wl.seed * 1_000_003 + i) % 2**32)
    out.append(Request(id=i, prompt=prompt, max_new_tokens=draw_length(wl.output_len, r),
                       sampling=sp, arrival=float(times[i]), domain=domain,
                       priority=int(r.integers(0, wl.num_priorities))))
  return out


_TRACE_REQUIRED = ("arrival", "max_new_tokens", "domain")
_TRACE_OPTIONAL = ("prompt", "tokens", "id", "priority", "seed", "temperature", "top_k", "top_p")


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# field -> (check, what it must be); JSON integers only where an integer is meant (not 4.9, "4",
# true), finite numbers only (json accepts NaN and Infinity).
_TRACE_CHECKS = {
    "arrival": (lambda v: _is_number(v) and v >= 0, "a finite number of seconds >= 0"),
    "max_new_tokens": (lambda v: _is_int(v) and v > 0, "a JSON integer > 0"),
    "domain": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "prompt": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "tokens": (lambda v: isinstance(v, list) and v and all(_is_int(t) and t >= 0 for t in v),
               "a non-empty list of JSON integers >= 0"),
    "id": (lambda v: _is_int(v) and 0 <= v < 2**31, "a JSON integer in [0, 2**31)"),
    "priority": (_is_int, "a JSON integer"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**32, "a JSON integer in [0, 2**32)"),
    "temperature": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "a JSON integer >= 0"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
}


def _json_constant(name):
  raise ValueError(f"{name} is not a finite number")


def parse_trace_line(raw, index, tok=tokenizer.BYTES):
  """One trace line (bytes) -> Request; TraceError (without the file:line) if it is bad.
  `prompt` text is encoded with `tok` (the model's tokenizer)."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise TraceError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
  try:
    rec = json.loads(text, parse_constant=_json_constant)
  except (json.JSONDecodeError, ValueError) as e:
    raise TraceError(f"not valid JSON ({getattr(e, 'msg', e)})") from None
  if not isinstance(rec, dict):
    raise TraceError(f"expected a JSON object, got {type(rec).__name__}")
  unknown = sorted(set(rec) - set(_TRACE_REQUIRED) - set(_TRACE_OPTIONAL))
  if unknown:
    raise TraceError(f"unknown fields {unknown}; a trace line has {list(_TRACE_REQUIRED)}, one "
                     f"of prompt/tokens, and optionally {list(_TRACE_OPTIONAL[2:])}")
  missing = [k for k in _TRACE_REQUIRED if k not in rec]
  if missing or ("prompt" in rec) == ("tokens" in rec):
    raise TraceError(f"needs fields {list(_TRACE_REQUIRED)} and exactly one of prompt/tokens; "
                     f"missing {missing or 'prompt or tokens'}")
  for key, value in rec.items():
    ok, what = _TRACE_CHECKS[key]
    if not ok(value):
      raise TraceError(f"bad field value: {key}={json.dumps(value)} must be {what}")
  for key in ("prompt", "domain"):
    why = not_utf8(rec[key], key) if key in rec else None
    if why:
      raise TraceError(why)
  prompt = tok.encode(rec["prompt"]) if "prompt" in rec else rec["tokens"]
  sp = SamplingParams(float(rec.get("temperature", 0.0)), rec.get("top_k", 0),
                      float(rec.get("top_p", 1.0)), rec.get("seed", 0))
  return Request(id=rec.get("id", index), prompt=prompt, max_new_tokens=rec["max_new_tokens"],
                 sampling=sp, arrival=float(rec["arrival"]), domain=rec["domain"],
                 priority=rec.get("priority", 0))


def load_trace(path, skipped=None, tok=tokenizer.BYTES):
  """Requests from a JSONL trace, one object per line (docs/serving.md, Traces).

  Fields: arrival (s), max_new_tokens, domain, and `prompt` (non-empty UTF-8 text, tokenized
  with BOS by `tok`, the model's tokenizer) or `tokens` (ids); optional id (default: the
  request's index), priority, seed, temperature, top_k, top_p. Types are strict and unknown fields are refused. Blank lines are
  skipped. A bad line raises TraceError naming file:line; with a list as `skipped`, bad lines are
  appended to it as {"line", "reason"} instead and the rest are returned. A trace with no request
  is an error. Values that parse but the engine cannot serve (e.g. an unknown domain) are
  rejected by the engine, with their reason in requests.jsonl.
  """
  out = []
  with files.open_read(path, binary=True) as f:
    for lineno, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      try:
        out.append(parse_trace_line(raw, len(out), tok))
      except TraceError as e:
        if skipped is None:
          raise TraceError(f"{path}:{lineno}: {e}") from None
        skipped.append({"line": lineno, "reason": str(e)})
  if not out:
    bad = f" ({len(skipped)} bad lines skipped)" if skipped else ""
    raise TraceError(f"{path}: the trace holds no request{bad}")
  return out
