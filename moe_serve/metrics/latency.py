"""Latency and throughput of an engine run, as vLLM's serving benchmark defines them
(docs/design.md section 3, Metrics).

From per-request records (the engine's `requests` log; times in seconds of virtual time):
- TTFT = first token time - arrival;
- TPOT = (E2EL - TTFT) / (output_len - 1), over requests with more than one output token;
- ITL = every gap between consecutive output tokens of a request, pooled over requests;
- E2EL = finish time - arrival;
- request throughput = completed requests / duration; output token throughput = output tokens /
  duration, where duration runs from the first arrival to the last finish of completed requests;
- goodput = completed requests meeting every given SLO (TTFT, TPOT, E2EL) / duration (TPOT
  counts as 0 for a one-token output, as vLLM does). None when no SLO is given.
Each distribution reports mean, median, p90 and p99 (numpy linear-interpolated percentiles, as
vLLM) in milliseconds; None when empty. `summarize` repeats everything per domain and per request
class (priority value).
"""
import collections

import numpy as np

PERCENTILES = (50, 90, 99)


def stats_ms(values_s):
  """{mean, median, p90, p99} in ms of a list of seconds; all None when empty."""
  if len(values_s) == 0:
    return dict(mean=None, median=None, p90=None, p99=None)
  ms = np.asarray(values_s, np.float64) * 1e3
  p50, p90, p99 = np.percentile(ms, PERCENTILES)
  return dict(mean=float(ms.mean()), median=float(p50), p90=float(p90), p99=float(p99))


def per_request(rec):
  """(ttft, tpot or None, e2el, itls) in seconds for one finished request record."""
  ttft = rec["first_token"] - rec["arrival"]
  e2el = rec["finish"] - rec["arrival"]
  n = rec["output_len"]
  tpot = (e2el - ttft) / (n - 1) if n > 1 else None
  itls = np.diff(np.asarray(rec["token_times"], np.float64)).tolist()
  return ttft, tpot, e2el, itls


def _block(done, duration, slo_ttft_ms, slo_tpot_ms, slo_e2el_ms=None):
  ttfts, tpots, e2els, itls, good = [], [], [], [], 0
  for rec in done:
    ttft, tpot, e2el, itl = per_request(rec)
    ttfts.append(ttft)
    e2els.append(e2el)
    itls.extend(itl)
    if tpot is not None:
      tpots.append(tpot)
    ok_ttft = slo_ttft_ms is None or ttft * 1e3 <= slo_ttft_ms
    ok_tpot = slo_tpot_ms is None or (tpot or 0.0) * 1e3 <= slo_tpot_ms
    ok_e2el = slo_e2el_ms is None or e2el * 1e3 <= slo_e2el_ms
    good += ok_ttft and ok_tpot and ok_e2el
  out_tokens = sum(r["output_len"] for r in done)
  rate = lambda x: x / duration if duration > 0 else None
  no_slo = slo_ttft_ms is None and slo_tpot_ms is None and slo_e2el_ms is None
  return dict(
      completed=len(done), input_tokens=sum(r["prompt_len"] for r in done),
      output_tokens=out_tokens, request_throughput=rate(len(done)),
      output_throughput=rate(out_tokens), goodput=None if no_slo else rate(good),
      ttft_ms=stats_ms(ttfts), tpot_ms=stats_ms(tpots), itl_ms=stats_ms(itls),
      e2el_ms=stats_ms(e2els))


def prefix_cache_hits(records):
  """With serve.prefix_cache (records carry `cached_tokens`): {"cached_tokens", "prompt_tokens",
  "hit_rate"} over finished requests (hit rate: cached / prompt tokens, as vLLM counts its
  prefix cache hits); None for records of a run without it."""
  done = [r for r in records if r["status"] == "finished"]
  if not any("cached_tokens" in r for r in done):
    return None
  cached, prompt = (sum(r[k] for r in done) for k in ("cached_tokens", "prompt_len"))
  return dict(cached_tokens=cached, prompt_tokens=prompt,
              hit_rate=cached / prompt if prompt else 0.0)


def summarize(records, slo_ttft_ms=None, slo_tpot_ms=None, slo_e2el_ms=None):
  """The run summary (see module docstring) from every request record, rejected ones included."""
  done = [r for r in records if r["status"] == "finished"]
  rejected = [r for r in records if r["status"] == "rejected"]
  duration = (max(r["finish"] for r in done) - min(r["arrival"] for r in done)) if done else 0.0
  out = dict(duration_s=duration, rejected=len(rejected),
             reject_reasons=dict(collections.Counter(r["reason"] for r in rejected)),
             preemptions=sum(r["preemptions"] for r in done),
             slo=dict(ttft_ms=slo_ttft_ms, tpot_ms=slo_tpot_ms, e2el_ms=slo_e2el_ms))
  slos = (slo_ttft_ms, slo_tpot_ms, slo_e2el_ms)
  out.update(_block(done, duration, *slos))
  domains = sorted({r["domain"] for r in done})
  out["per_domain"] = {d: _block([r for r in done if r["domain"] == d], duration, *slos)
                       for d in domains}
  # Request classes: the priority value (JSON keys are strings).
  classes = sorted({r.get("priority", 0) for r in done})
  out["per_priority"] = {str(c): _block([r for r in done if r.get("priority", 0) == c], duration,
                                        *slos) for c in classes}
  hits = prefix_cache_hits(records)
  if hits is not None:
    out["prefix_cache"] = hits
  return out
