"""`benchmark.json`: a serving run's metrics under the field names and meanings of vLLM's
`vllm bench serve --save-result` (benchmarks/benchmark_serving.py before), so tools that read
those files read ours (docs/serving.md, Metrics).

From the engine's request records (seconds of virtual time):
- `completed` finished requests, `failed` rejected ones; `duration` (s) from the first arrival to
  the last finish of completed requests;
- `total_input_tokens`, `total_output_tokens` of completed requests; `request_throughput`,
  `output_throughput`, `total_token_throughput` (input + output tokens) per second of duration;
- `request_goodput`: completed requests meeting every given SLO (ms, inclusive) per second; a
  one-token output counts TPOT 0 (as vLLM); None when no SLO is given;
- for each metric M of ttft, tpot, itl, e2el: `mean_M_ms`, `median_M_ms`, `std_M_ms` (population
  std, numpy's default as vLLM) and `pP_M_ms` for each chosen percentile P (numpy linear
  interpolation; key `p99`, `p99.9`). TPOT is over requests with more than one output token, ITL
  pools every gap between consecutive tokens. An empty metric reports 0, as vLLM does.
"""
import datetime

import numpy as np

from moe_serve import config as config_lib
from moe_serve.metrics import latency

METRICS = ("ttft", "tpot", "itl", "e2el")
DEFAULT_PERCENTILES = (99.0,)  # vLLM's --metric-percentiles default


def parse_percentiles(items):
  """["50", "99.9"] (the --metric_percentiles flag) -> (50.0, 99.9); ConfigError if one is not a
  number in (0, 100]."""
  out = []
  for item in items:
    try:
      p = float(item)
    except ValueError:
      p = None
    if p is None or not 0 < p <= 100:
      raise config_lib.ConfigError(f"--metric_percentiles: {item!r} is not a percentile in "
                                   "(0, 100]")
    out.append(p)
  return tuple(out)


def percentile_key(p, metric):
  """vLLM's key of percentile `p` of `metric`: p99_ttft_ms, p99.9_ttft_ms."""
  word = str(int(p)) if int(p) == p else str(p)
  return f"p{word}_{metric}_ms"


def result(records, percentiles=DEFAULT_PERCENTILES, slo_ms=None, metadata=None):
  """The benchmark.json dict of a run's request records. `slo_ms`: {"ttft"|"tpot"|"e2el": ms}
  for goodput; `metadata` (date, model_id, ...) is copied in first."""
  slo_ms = {k: v for k, v in (slo_ms or {}).items() if v is not None}
  unknown = sorted(set(slo_ms) - {"ttft", "tpot", "e2el"})
  if unknown:
    raise ValueError(f"goodput SLOs {unknown} are not among ttft, tpot, e2el")
  done = [r for r in records if r["status"] == "finished"]
  values = {m: [] for m in METRICS}
  good = 0
  for rec in done:
    ttft, tpot, e2el, itls = latency.per_request(rec)
    values["ttft"].append(ttft)
    values["e2el"].append(e2el)
    values["itl"].extend(itls)
    if tpot is not None:
      values["tpot"].append(tpot)
    got = dict(ttft=ttft, tpot=tpot or 0.0, e2el=e2el)
    good += all(got[k] * 1e3 <= v for k, v in slo_ms.items())
  duration = (max(r["finish"] for r in done) - min(r["arrival"] for r in done)) if done else 0.0
  per_s = lambda x: x / duration if duration > 0 else 0.0
  n_in = sum(r["prompt_len"] for r in done)
  n_out = sum(r["output_len"] for r in done)
  out = dict(metadata or {})
  out.update(
      duration=duration, completed=len(done),
      failed=sum(r["status"] == "rejected" for r in records),
      total_input_tokens=n_in, total_output_tokens=n_out,
      request_throughput=per_s(len(done)), request_goodput=per_s(good) if slo_ms else None,
      output_throughput=per_s(n_out), total_token_throughput=per_s(n_in + n_out))
  hits = latency.prefix_cache_hits(records)
  if hits is not None:  # not a vLLM bench field; named like its prefix cache metrics
    out.update(num_cached_tokens=hits["cached_tokens"], prefix_cache_hit_rate=hits["hit_rate"])
  for metric in METRICS:
    ms = np.asarray(values[metric] or [0.0], np.float64) * 1e3
    out[f"mean_{metric}_ms"] = float(ms.mean())
    out[f"median_{metric}_ms"] = float(np.median(ms))
    out[f"std_{metric}_ms"] = float(ms.std())
    for p in percentiles:
      out[percentile_key(p, metric)] = float(np.percentile(ms, p))
  return out


def metadata(cfg, params_source, started=None):
  """vLLM's run-description fields for a serving config: date, backend, model_id, num_prompts,
  request_rate and burstiness (of a generated workload; "trace" for a replayed one)."""
  started = started or datetime.datetime.now()
  wl = cfg.workload
  traced = bool(wl.get("trace"))
  model_id = (params_source or {}).get("dir") or "random-init"
  return dict(
      date=started.strftime("%Y%m%d-%H%M%S"), backend="moe_serve", model_id=model_id,
      tokenizer_id=model_id, num_prompts=None if traced else wl.num_requests,
      request_rate="trace" if traced else float(wl.arrival.rate),
      burstiness=None if traced or wl.arrival.kind != "gamma" else float(wl.arrival.burstiness),
      clock_mode=cfg.clock.mode)
