"""Importers for the serving traces people share (docs/traces.md has the mapping):

- `sharegpt`: a JSON array (or JSON lines) of {"conversations": [{"from", "value"}, ...]}; the
  first human turn is the prompt (text, tokenized by the model's tokenizer), the token count of
  the turn after it is `max_new_tokens`; arrivals come from `workload.arrival` (ShareGPT has no
  times);
- `burstgpt`: BurstGPT CSV (`Timestamp`, `Request tokens`, `Response tokens`, ...): arrival and
  token counts; rows with 0 response tokens (failed requests) are left out;
- `azure`: Azure LLM inference trace CSV (`TIMESTAMP`, `ContextTokens`, `GeneratedTokens`);
- `mooncake`: Mooncake's FAST'25 JSON lines (`timestamp` ms, `input_length`, `output_length`,
  `hash_ids`: one id per 512-token block, equal ids meaning equal blocks): each id's block is
  drawn once from the prompt source, so requests with equal ids share those tokens
  (`_block_prompt`).

A ShareGPT entry whose human turn has no turn after it (prompt-only subsets) is served with an
output length drawn from `workload.output_len`; `load` counts them. Token-count formats get
prompts of exactly the given length from a prompt source (serving/stream/prompt_sources.py). Every
format: token counts times `length_scale` (rounded, >= 1; Mooncake by whole blocks), arrivals
from 0 times `time_scale`, at most `max_requests` requests (0: all) in file order, a domain per
request from `workload.mix` (seeded by (seed, i), as generated workloads), sampling from
`workload.temperature/top_k/top_p`. A malformed entry (text that is not UTF-8 included) raises
TraceError naming file:line, or is listed in `skipped` ({"line", "reason"}) when a list is given.
"""
import csv
import datetime
import json

import numpy as np

from moe_serve import config as config_lib
from moe_serve import files
from moe_serve.serving.stream import workload
from moe_serve.serving.stream.request import Request, SamplingParams

FORMATS = config_lib.TRACE_FORMATS
HUMAN_ROLES = ("human", "user")


MOONCAKE_BLOCK = 512  # tokens per hash id in Mooncake's traces
_BLOCK_STREAM = 0x6d6f6f6e  # separates the generators of Mooncake blocks from those of requests


class _Entry:
  """One imported request before prompts and domains: source line, arrival or None, prompt ids
  or a prompt length (with Mooncake's `hash_ids`), output length or None (drawn)."""

  def __init__(self, line, arrival, output_len, prompt=None, prompt_len=None, hash_ids=None):
    self.line, self.arrival, self.output_len = line, arrival, output_len
    self.prompt, self.prompt_len, self.hash_ids = prompt, prompt_len, hash_ids


def _fail(path, line, message, skipped):
  if skipped is None:
    raise workload.TraceError(f"{path}:{line}: {message}")
  skipped.append({"line": line, "reason": message})


def _json_entries(path):
  """(line, object) for each element of a top-level JSON array, or each JSON line. Bytes that
  are not UTF-8 come through as lone surrogates (surrogateescape), refused where text is read."""
  with files.open_read(path, errors="surrogateescape") as f:
    text = f.read()
  decoder = json.JSONDecoder()
  pos = len(text) - len(text.lstrip())
  if not text.startswith("[", pos):  # JSON lines (split at \n only: not at U+2028 in a string)
    for line, raw in enumerate(text.split("\n"), 1):
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
  """ShareGPT entries and the number left out (no human turn, or an empty prompt or reply); a
  human turn with no turn after it is kept with output length None (drawn in `load`)."""
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
    if first is None or not turns[first]["value"]:
      left_out += 1
      continue
    used = turns[first:first + 2]  # the prompt and its reply, if there is one
    why = next((w for k, t in enumerate(used)
                if (w := workload.not_utf8(t["value"], f"conversations[{first + k}].value"))),
               None)
    if why:
      _fail(path, line, why, skipped)
      continue
    reply = len(tok.encode(used[1]["value"], bos=False)) if len(used) == 2 else None
    if reply == 0:
      left_out += 1
      continue
    out.append(_Entry(line, None, reply, prompt=tok.encode(used[0]["value"])))
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
  # A byte that is not UTF-8 reads as a lone surrogate: a bad number in a used column, named by
  # its line, instead of a UnicodeDecodeError out of the reader.
  with files.open_read(path, newline="", errors="surrogateescape") as f:
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


def _whole(rec, key, low):
  value = rec.get(key)
  if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
    raise ValueError(f"{key}={json.dumps(value)} must be a JSON integer >= {low}")
  return value


def _mooncake_entry(rec):
  """One Mooncake line -> (arrival s, input_length, output_length, hash_ids); ValueError says
  what is wrong."""
  if not isinstance(rec, dict):
    raise ValueError('expected {"timestamp", "input_length", "output_length", "hash_ids"}')
  stamp = rec.get("timestamp")
  if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not 0 <= stamp < np.inf:
    raise ValueError(f"timestamp={json.dumps(stamp)} must be a finite number of ms >= 0")
  input_len, output_len = _whole(rec, "input_length", 1), _whole(rec, "output_length", 0)
  ids = rec.get("hash_ids")
  if not isinstance(ids, list) or not all(
      isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
    raise ValueError(f"hash_ids={json.dumps(ids)} must be a list of JSON integers >= 0")
  blocks = -(-input_len // MOONCAKE_BLOCK)
  if len(ids) != blocks:
    raise ValueError(f"input_length={input_len} needs {blocks} hash_ids (one per "
                     f"{MOONCAKE_BLOCK} tokens), got {len(ids)}")
  return stamp / 1e3, input_len, output_len, ids


def _mooncake(path, skipped, cap):
  """Mooncake entries; requests with output_length 0 are left out (as BurstGPT's failures)."""
  out, left_out = [], 0
  for line, rec in _json_entries(path):
    if len(out) == cap:
      break
    if isinstance(rec, workload.TraceError):
      _fail(path, line, str(rec), skipped)
      continue
    try:
      arrival, input_len, output_len, ids = _mooncake_entry(rec)
    except ValueError as e:
      _fail(path, line, str(e), skipped)
      continue
    if output_len == 0:
      left_out += 1
      continue
    out.append(_Entry(line, arrival, output_len, prompt_len=input_len, hash_ids=ids))
  return out, left_out


def _scaled(n, scale):
  return max(int(round(n * scale)), 1)


class _Blocks:
  """Mooncake's blocks as token ids: hash id h is `size` = round(512 * length_scale) (>= 1)
  tokens of the prompt source, drawn once with a generator seeded by (seed, _BLOCK_STREAM, h) in
  a domain of `workload.mix` drawn with it, so equal ids are equal tokens in every request."""

  def __init__(self, wl, prompt_source, scale, head):
    self.size = _scaled(MOONCAKE_BLOCK, scale)
    self.seed, self.source, self.head, self.cache = int(wl.seed), prompt_source, head, {}
    self.domains = list(wl.mix.keys())
    weights = np.asarray([float(wl.mix[d]) for d in self.domains])
    self.p = weights / weights.sum()

  def tokens(self, h):
    if h not in self.cache:
      r = np.random.default_rng([self.seed, _BLOCK_STREAM, h])
      domain = self.domains[r.choice(len(self.domains), p=self.p)]
      drawn = self.source(domain, self.size + len(self.head), r)
      self.cache[h] = list(drawn)[len(self.head):]  # without the BOS every draw starts with
    return self.cache[h]

  def prompt(self, hash_ids, input_len):
    """The blocks of `hash_ids` in order, all but the last whole, the last cut to its share of
    `input_len` (1..512 tokens, scaled as size / 512: a prefix of its block); the tokenizer's
    BOS takes the place of the first token, so the prompt has exactly the scaled length and
    block j starts at j * size."""
    last = input_len - MOONCAKE_BLOCK * (len(hash_ids) - 1)
    last = min(max(int(round(last * self.size / MOONCAKE_BLOCK)), 1), self.size)
    ids = [t for h in hash_ids[:-1] for t in self.tokens(h)] + self.tokens(hash_ids[-1])[:last]
    return self.head + ids[len(self.head):]


def load(wl, path, fmt, tok, prompt_source, skipped=None):
  """Requests from the trace at `path` in format `fmt` (not jsonl) for the `workload` config
  `wl`; returns (requests, counts): counts["left_out"] entries left out by the format's filter,
  counts["prompt_only"] ShareGPT requests served with a drawn output length."""
  cap = int(wl.get("max_requests", 0)) or None
  if fmt == "sharegpt":
    entries, left_out = _sharegpt(path, tok, skipped, cap)
  elif fmt == "mooncake":
    entries, left_out = _mooncake(path, skipped, cap)
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
  blocks = _Blocks(wl, prompt_source, scale, list(tok.encode(""))) if fmt == "mooncake" else None
  domains = list(wl.mix.keys())
  weights = np.asarray([float(wl.mix[d]) for d in domains])
  out, prompt_only = [], 0
  for i, e in enumerate(entries):
    r = np.random.default_rng([wl.seed, i])
    domain = domains[r.choice(len(domains), p=weights / weights.sum())]
    if e.prompt is not None:
      prompt = e.prompt[:_scaled(len(e.prompt), scale)] if scale != 1 else e.prompt
    elif e.hash_ids is not None:
      prompt = blocks.prompt(e.hash_ids, e.prompt_len)
    else:
      prompt = prompt_source(domain, _scaled(e.prompt_len, scale), r)
    if e.output_len is None:  # no reply in the trace: drawn as a generated request's, unscaled
      max_new_tokens = workload.draw_length(wl.output_len, r)
      prompt_only += 1
    else:
      max_new_tokens = _scaled(e.output_len, scale)
    sp = SamplingParams(float(wl.temperature), int(wl.top_k), float(wl.top_p),
                        seed=(wl.seed * 1_000_003 + i) % 2**32)
    out.append(Request(id=i, prompt=prompt, max_new_tokens=max_new_tokens,
                       sampling=sp, arrival=float(times[i]), domain=domain))
  return out, dict(left_out=left_out, prompt_only=prompt_only)
