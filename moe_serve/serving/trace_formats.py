"""Importers for the serving traces people share (docs/traces.md has the mapping):

- `sharegpt`: a JSON array (or JSON lines) of {"conversations": [{"from", "value"}, ...]}; the
  first human turn is the prompt (text, tokenized by the model's tokenizer), the token count of
  the turn after it is `max_new_tokens`; arrivals come from `workload.arrival` (ShareGPT has no
  times);
- `burstgpt`: BurstGPT CSV (`Timestamp`, `Request tokens`, `Response tokens`, ...): arrival and
  token counts; rows with 0 response tokens (failed requests) are left out;
- `azure`: Azure LLM inference trace CSV (`TIMESTAMP`, `ContextTokens`, `GeneratedTokens`).

Token-count formats get prompts of exactly the given length from a prompt source
(serving/prompt_sources.py). Every format: token counts times `length_scale` (rounded, >= 1),
arrivals from 0 times `time_scale`, at most `max_requests` requests (0: all) in file order, a
domain per request from `workload.mix` (seeded by (seed, i), as generated workloads), sampling
from `workload.temperature/top_k/top_p`. A malformed entry raises TraceError naming file:line, or
is listed in `skipped` ({"line", "reason"}) when a list is given.
"""
import csv
import datetime
import json

import numpy as np

from moe_serve import config as config_lib
from moe_serve import files
from moe_serve.serving import workload
from moe_serve.serving.request import Request, SamplingParams

FORMATS = config_lib.TRACE_FORMATS
HUMAN_ROLES = ("human", "user")


class _Entry:
  """One imported request before prompts and domains: source line, arrival or None, prompt ids
  or a prompt length, output length."""

  def __init__(self, line, arrival, output_len, prompt=None, prompt_len=None):
    self.line, self.arrival, self.output_len = line, arrival, output_len
    self.prompt, self.prompt_len = prompt, prompt_len


def _fail(path, line, message, skipped):
  if skipped is None:
    raise workload.TraceError(f"{path}:{line}: {message}")
  skipped.append({"line": line, "reason": message})


def _json_entries(path):
  """(line, object) for each element of a top-level JSON array, or each JSON line."""
  with files.open_read(path) as f:
    text = f.read()
  decoder = json.JSONDecoder()
  pos = len(text) - len(text.lstrip())
  if not text.startswith("[", pos):  # JSON lines
    for line, raw in enumerate(text.splitlines(), 1):
      if raw.strip():
        try:
          yield line, json.loads(raw)
        except json.JSONDecodeError as e:
          yield line, workload.TraceError(f"not valid JSON ({e.msg})")
    return
  pos += 1
  while True:
    while pos < len(text) and text[pos] in " \t\r\n,":
      pos += 1
    line = text.count("\n", 0, pos) + 1
    if pos >= len(text):
      raise workload.TraceError(f"{path}:{line}: the JSON array is not closed with ]")
    if text[pos] == "]":
      return
    try:
      obj, pos = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:  # the array cannot be read past a syntax error
      raise workload.TraceError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    yield line, obj


def _sharegpt(path, tok, skipped, cap):
  """ShareGPT entries; conversations without a human turn followed by a reply are left out."""
  out, left_out = [], 0
  for line, conv in _json_entries(path):
    if len(out) == cap:
      break
    if isinstance(conv, workload.TraceError):
      _fail(path, line, str(conv), skipped)
      continue
    turns = conv.get("conversations") if isinstance(conv, dict) else None
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and isinstance(t.get("from"), str) and isinstance(t.get("value"), str)
        for t in turns):
      _fail(path, line, 'expected {"conversations": [{"from": str, "value": str}, ...]}', skipped)
      continue
    first = next((i for i, t in enumerate(turns) if t["from"] in HUMAN_ROLES), None)
    if first is None or first + 1 >= len(turns) or not turns[first]["value"]:
      left_out += 1
      continue
    reply = len(tok.encode(turns[first + 1]["value"], bos=False))
    if reply == 0:
      left_out += 1
      continue
    out.append(_Entry(line, None, reply, prompt=tok.encode(turns[first]["value"])))
  return out, left_out


def _count(row, key):
  value = row.get(key)
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{key}={value!r} must be a number") from None
  if not number >= 0 or number != int(number):
    raise ValueError(f"{key}={value!r} must be a whole number >= 0")
  return int(number)


def _seconds(value):
  number = float(value)
  if not np.isfinite(number):
    raise ValueError
  return number


def _azure_time(value):
  """'2023-11-16 18:15:46.6805900' -> POSIX seconds (any number of fraction digits)."""
  stamp, _, frac = value.strip().partition(".")
  t = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
  return t.replace(tzinfo=datetime.timezone.utc).timestamp() + (float("0." + frac) if frac else 0)


# format -> (time column, its parser, prompt tokens column, output tokens column)
_CSV = {
    "burstgpt": ("Timestamp", _seconds, "Request tokens", "Response tokens"),
    "azure": ("TIMESTAMP", _azure_time, "ContextTokens", "GeneratedTokens"),
}


def _csv(path, fmt, skipped, cap):
  time_key, parse_time, prompt_key, output_key = _CSV[fmt]
  out, left_out = [], 0
  with files.open_read(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [k for k in (time_key, prompt_key, output_key) if k not in (reader.fieldnames or ())]
    if missing:
      needs = [time_key, prompt_key, output_key]
      raise workload.TraceError(f"{path}:1: a {fmt} trace needs columns {needs}; missing "
                                f"{missing} (header: {reader.fieldnames})")
    for row in reader:
      if len(out) == cap:
        break
      line = reader.line_num
      if None in row or None in row.values():
        _fail(path, line, f"expected {len(reader.fieldnames)} columns", skipped)
        continue
      try:
        arrival = parse_time(row[time_key])
      except ValueError:
        _fail(path, line, f"{time_key}={row[time_key]!r} is not a time", skipped)
        continue
      try:
        prompt_len, output_len = _count(row, prompt_key), _count(row, output_key)
      except ValueError as e:
        _fail(path, line, str(e), skipped)
        continue
      if output_len == 0 or prompt_len == 0:  # a failed request (BurstGPT logs them with 0)
        left_out += 1
        continue
      out.append(_Entry(line, arrival, output_len, prompt_len=prompt_len))
  return out, left_out


def _scaled(n, scale):
  return max(int(round(n * scale)), 1)


def load(wl, path, fmt, tok, prompt_source, skipped=None):
  """Requests from the trace at `path` in format `fmt` (not jsonl) for the `workload` config
  `wl`; returns (requests, number of entries left out by the format's filter)."""
  cap = int(wl.get("max_requests", 0)) or None
  if fmt == "sharegpt":
    entries, left_out = _sharegpt(path, tok, skipped, cap)
  elif fmt in _CSV:
    entries, left_out = _csv(path, fmt, skipped, cap)
  else:
    raise ValueError(f"trace format {fmt!r} is not one of {list(FORMATS)}")
  if not entries:
    bad = f", {len(skipped)} bad entries skipped" if skipped else ""
    raise workload.TraceError(f"{path}: the trace holds no request ({left_out} left out{bad})")
  if entries[0].arrival is None:  # no times in the trace: the workload's arrival process
    times = workload.arrival_times(wl.arrival, len(entries), np.random.default_rng(wl.seed))
  else:
    times = np.asarray([e.arrival for e in entries], np.float64)
    times = times - times.min()
  times = times * float(wl.get("time_scale", 1.0))
  scale = float(wl.get("length_scale", 1.0))
  domains = list(wl.mix.keys())
  weights = np.asarray([float(wl.mix[d]) for d in domains])
  out = []
  for i, e in enumerate(entries):
    r = np.random.default_rng([wl.seed, i])
    domain = domains[r.choice(len(domains), p=weights / weights.sum())]
    if e.prompt is not None:
      prompt = e.prompt[:_scaled(len(e.prompt), scale)] if scale != 1 else e.prompt
    else:
      prompt = prompt_source(domain, _scaled(e.prompt_len, scale), r)
    sp = SamplingParams(float(wl.temperature), int(wl.top_k), float(wl.top_p),
                        seed=(wl.seed * 1_000_003 + i) % 2**32)
    out.append(Request(id=i, prompt=prompt, max_new_tokens=_scaled(e.output_len, scale),
                       sampling=sp, arrival=float(times[i]), domain=domain))
  return out, left_out
