r"""serve.prefix_cache on and off: the bundled model on a workload whose prompts share prefixes.

  python benchmarks/prefix_cache.py                      # synthetic system prompts, 5 rounds
  python benchmarks/prefix_cache.py --trace=mooncake_trace.jsonl --trace_format=mooncake \
      --config.workload.length_scale=0.015625 --append_to=benchmarks/RESULTS.md

configs/serve_default.py (bundled model, cost-model clock). The default workload: `--groups`
system prompts of `--system_len` tokens, each request one of them (round robin) plus its own
question of 8-40 tokens, Poisson arrivals at `--rate`; or a trace (`--trace`, any
workload.trace_format; Mooncake's hash_ids say which blocks requests share). One engine per mode,
warmed up; each round runs both on the same requests (interleaved). Virtual-time metrics (TTFT,
output tok/s under the cost model, which prices what a step computes: cached tokens cost
nothing, the block copies are not priced) are the same every round; wall output tok/s is the
median over rounds and the on/off ratio the median of the rounds' ratios.
"""
import statistics
import time

from absl import app, flags
from ml_collections import config_flags
import numpy as np

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.metrics import latency
from moe_serve.serving.stream import request as request_lib
from moe_serve.serving import run as run_lib

import common  # benchmarks/common.py (the script's folder is on sys.path)

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve_default.py")
_REPEATS = flags.DEFINE_integer("repeats", 5, "interleaved rounds")
_REQUESTS = flags.DEFINE_integer("requests", 256, "synthetic workload: requests")
_GROUPS = flags.DEFINE_integer("groups", 4, "synthetic workload: distinct system prompts")
_SYSTEM_LEN = flags.DEFINE_integer("system_len", 128, "synthetic workload: system prompt tokens")
_RATE = flags.DEFINE_float("rate", 40.0, "synthetic workload: arrivals per second")
_TRACE = flags.DEFINE_string("trace", "", "a trace instead (sets workload.trace)")
_TRACE_FORMAT = flags.DEFINE_string("trace_format", "mooncake", "its workload.trace_format")
_APPEND = flags.DEFINE_string("append_to", None, "append the markdown table to this file")


def system_prompt_requests(cfg, seed=0):
  """Requests sharing `--groups` system prompts (see the module docstring)."""
  rng = np.random.default_rng(seed)
  vocab = cfg.model.vocab_size
  systems = [[1] + rng.integers(3, vocab, _SYSTEM_LEN.value - 1).tolist()
             for _ in range(_GROUPS.value)]
  arrivals = np.cumsum(rng.exponential(1.0 / _RATE.value, _REQUESTS.value))
  return [request_lib.Request(
      id=i, prompt=systems[i % len(systems)] + rng.integers(3, vocab, int(rng.integers(
          8, 41))).tolist(), max_new_tokens=int(rng.integers(16, 65)), arrival=float(t),
      domain="prose") for i, t in enumerate(arrivals)]


def main(argv):
  del argv
  base = _CONFIG.value
  base.serve.update(plots=False, ignore_eos=True)
  if _TRACE.value:
    base.workload.update(trace=_TRACE.value, trace_format=_TRACE_FORMAT.value)
  config_lib.validate_for(base, "serve")
  requests = run_lib.make_requests(base) if _TRACE.value else system_prompt_requests(base)
  engines, params = {}, None
  for on in (False, True):
    cfg = base.copy_and_resolve_references()
    cfg.serve.prefix_cache = on
    engines[on] = run_lib.build_engine(cfg, params=params)
    params = engines[on].params
    engines[on].warmup()
  print(f"{len(requests)} requests x 2 modes x {_REPEATS.value} rounds ...", flush=True)
  wall, logs = {False: [], True: []}, {}
  for _ in range(_REPEATS.value):
    for on in (False, True):
      t0 = time.perf_counter()
      logs[on] = engines[on].run(requests)
      wall[on].append(time.perf_counter() - t0)
  rows = []
  for on in (False, True):
    summary = latency.summarize(logs[on].requests)
    hits = latency.prefix_cache_hits(logs[on].requests) or dict(hit_rate=0.0)
    out_tok = summary["output_tokens"]
    rows.append(["on" if on else "off", str(summary["completed"]), f"{hits['hit_rate']:.3f}",
                 f"{summary['ttft_ms']['median']:.1f}", f"{summary['ttft_ms']['p99']:.1f}",
                 f"{summary['output_throughput']:.0f}",
                 f"{statistics.median(out_tok / w for w in wall[on]):.0f}",
                 f"{statistics.median(b / a for a, b in zip(wall[False], wall[True])):.2f}x"
                 if on else "1.00x"])
  what = (f"trace {_TRACE.value} ({_TRACE_FORMAT.value})" if _TRACE.value else
          f"{_REQUESTS.value} requests, {_GROUPS.value} system prompts of {_SYSTEM_LEN.value} "
          f"tokens + 8-40 own, 16-64 output tokens, {_RATE.value:g} req/s")
  common.report("serve.prefix_cache on and off",
                f"bundled model, configs/serve_default.py, {what}; {_REPEATS.value} interleaved "
                "rounds. TTFT and output tok/s in virtual time (cost model: cached tokens cost "
                "nothing, block copies unpriced); wall tok/s median of rounds.",
                ["prefix cache", "completed", "hit rate", "TTFT p50 ms", "TTFT p99 ms",
                 "out tok/s (virtual)", "out tok/s (wall)", "wall time on / off"], rows,
                _APPEND.value)


if __name__ == "__main__":
  app.run(main)
