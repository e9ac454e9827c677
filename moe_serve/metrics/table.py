"""A plain-text table of a run summary (metrics/latency.py `summarize` plus run facts)."""

_DISTS = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")


def _num(x, fmt="{:.2f}"):
  return "-" if x is None else fmt.format(x)


def _goodput(s):
  slo = {k: v for k, v in s["slo"].items() if v is not None}
  if not slo:
    return "goodput: no SLO given (--slo_ttft_ms, --slo_tpot_ms, --slo_e2el_ms)"
  within = ", ".join(f"{k.replace('_ms', '')} <= {v:g} ms" for k, v in slo.items())
  return f"goodput {_num(s['goodput'])} req/s ({within})"


def format_summary(s):
  """The summary as aligned text: totals, then one row per latency metric, then per domain."""
  lines = [
      f"requests: {s['completed']} completed, {s['rejected']} rejected, "
      f"{s['preemptions']} preemptions; {s.get('steps', '?')} steps; "
      f"virtual duration {s['duration_s']:.3f} s ({s.get('clock_mode', '?')} clock"
      + (f": {s['clock_source']})" if s.get("clock_mode") == "cost_model" and
         s.get("clock_source") else ")"),
      f"throughput: {_num(s['request_throughput'])} req/s, "
      f"{_num(s['output_throughput'], '{:.1f}')} output tok/s; {_goodput(s)}",
  ]
  if "wall" in s:
    w = s["wall"]
    lines.append(f"wall: run {w['run_s']:.2f} s, warm-up {w['warmup_s']:.2f} s, host/step "
                 f"{_num(w['host_fraction'], '{:.1%}')}, compiles after warm-up "
                 f"{s['compiles_after_warmup']}")
  if "memory" in s:
    m, mib = s["memory"], lambda key: f"{s['memory'][key] / 2**20:.2f} MiB"
    lines.append(f"memory per device ({m['devices']} devices): params "
                 f"{mib('params_bytes_per_device')}, KV cache {mib('cache_bytes_per_device')} "
                 f"(of {mib('params_bytes')} and {mib('cache_bytes')} in all)")
  if "prefix_cache" in s:
    pc = s["prefix_cache"]
    lines.append(f"prefix cache: {pc['cached_tokens']} of {pc['prompt_tokens']} prompt tokens "
                 f"cached (hit rate {pc['hit_rate']:.1%})")
  for reason, n in sorted(s["reject_reasons"].items()):
    lines.append(f"  rejected x{n}: {reason}")
  lines.append(f"{'metric':<10}{'mean':>10}{'median':>10}{'p90':>10}{'p99':>10}")
  for name in _DISTS:
    d = s[name]
    lines.append(f"{name:<10}" + "".join(f"{_num(d[k]):>10}" for k in ("mean", "median", "p90",
                                                                        "p99")))
  if s.get("per_domain"):
    lines.append(f"{'domain':<10}{'done':>6}{'out tok/s':>11}{'ttft p50':>10}{'tpot p50':>10}"
                 f"{'e2el p99':>10}")
    for dom, d in s["per_domain"].items():
      lines.append(f"{dom:<10}{d['completed']:>6}{_num(d['output_throughput'], '{:.1f}'):>11}"
                   f"{_num(d['ttft_ms']['median']):>10}{_num(d['tpot_ms']['median']):>10}"
                   f"{_num(d['e2el_ms']['p99']):>10}")
  return "\n".join(lines)
