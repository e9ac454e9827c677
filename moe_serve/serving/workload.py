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
from moe_serve.data import tokenizer
from moe_serve.serving.request import Request, SamplingParams

ARRIVALS = config_lib.ARRIVAL_KINDS
LENGTHS = config_lib.LENGTH_KINDS


class TraceError(ValueError):
  """A trace line cannot be turned into a request; the message names the line."""


class PromptSource(Protocol):
  """domain, target length, generator -> prompt token ids (BOS first). Lengths are a target."""

  def __call__(self, domain: str, length: int, rng: np.random.Generator) -> list[int]:
    ...


class SyntheticPromptSource:
  """Random byte tokens from a per-domain alphabet, so domains differ but need no corpus.

  The alphabet of a domain is a contiguous byte range picked from a stable hash of its name
  (crc32, not Python's per-process `hash`).
  """

  def __init__(self, alphabet_size=32):
    self.alphabet_size = alphabet_size

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


_TRACE_FIELDS = ("arrival", "max_new_tokens", "domain")


def load_trace(path):
  """Requests from a JSONL trace, one object per line.

  Fields: arrival (s), max_new_tokens, domain, and `prompt` (text, tokenized with BOS) or
  `tokens` (ids); optional id (default: line index), priority, seed, temperature, top_k, top_p.
  Blank lines are skipped. A malformed line raises TraceError naming the file and line number;
  values that parse but are unusable (e.g. an unknown domain) are left to the engine to reject.
  """
  out = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise TraceError(f"{where}: not valid JSON ({e.msg})") from None
      if not isinstance(rec, dict):
        raise TraceError(f"{where}: expected a JSON object, got {type(rec).__name__}")
      missing = [k for k in _TRACE_FIELDS if k not in rec]
      if missing or ("prompt" in rec) == ("tokens" in rec):
        raise TraceError(f"{where}: needs fields {list(_TRACE_FIELDS)} and exactly one of "
                         f"prompt/tokens; missing {missing or 'prompt or tokens'}")
      try:
        prompt = (tokenizer.encode(rec["prompt"]) if "prompt" in rec
                  else [int(t) for t in rec["tokens"]])
        sp = SamplingParams(float(rec.get("temperature", 0.0)), int(rec.get("top_k", 0)),
                            float(rec.get("top_p", 1.0)), int(rec.get("seed", 0)))
        out.append(Request(id=int(rec.get("id", len(out))), prompt=prompt,
                           max_new_tokens=int(rec["max_new_tokens"]), sampling=sp,
                           arrival=float(rec["arrival"]), domain=str(rec["domain"]),
                           priority=int(rec.get("priority", 0))))
      except (TypeError, ValueError, AttributeError) as e:
        raise TraceError(f"{where}: bad field value ({e})") from None
  return out
