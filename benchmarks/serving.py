r"""Serving benchmark: steady-state throughput, scheduler host time, compiles, static vs continuous.

  python benchmarks/serving.py                      # base model, 64 slots; prints a table
  python benchmarks/serving.py --append             # ... and appends it to benchmarks/RESULTS.md

1. Saturated run (measured clock, every request arrives at once, ignore_eos): over the steady
   state (from the first step with every slot held to the last step with a request waiting),
   output tokens per wall second and the host time (scheduling, batch building, bookkeeping)
   as a fraction of the step time (model step + sampling + device->host copy).
2. The same Poisson workload under continuous and static batching (cost_model clock, so the
   comparison does not depend on machine noise): throughput and latency in virtual time.
"""
import datetime
import os
import tempfile

from absl import app, flags
import numpy as np

from configs import serve_default
from moe_serve.serving import run

import common  # benchmarks/common.py (the script's folder is on sys.path)

_APPEND = flags.DEFINE_bool("append", False, "Append the results to benchmarks/RESULTS.md.")
_SIZE = flags.DEFINE_string("size", "base", "Model size (base|tiny).")
_REQUESTS = flags.DEFINE_integer("num_requests", 256, "Requests per run.")
_RATE = flags.DEFINE_float("rate", 16.0, "Poisson arrival rate (req/s) of the comparison.")


def _cfg(**serve):
  cfg = serve_default.get_config(f"size={_SIZE.value}")
  cfg.serve.update(ignore_eos=True, **serve)
  cfg.workload.num_requests = _REQUESTS.value
  cfg.workload.prompt_source = "synthetic"  # exact lengths from the distribution (speed only)
  return cfg


def saturated():
  cfg = _cfg()
  cfg.clock.mode = "measured"
  cfg.workload.arrival.update(kind="constant", rate=1e6)
  with tempfile.TemporaryDirectory() as d:
    summary, log = run.serve(cfg, d, log=lambda *_: None)
  full = [s["step"] for s in log.steps if s["slots_used"] == cfg.serve.max_num_seqs]
  busy = [s["step"] for s in log.steps if s["waiting"] > 0]
  lo, hi = full[0], busy[-1]
  window = log.steps[lo:hi + 1]
  t0, t1 = window[0]["t"], window[-1]["t"] + window[-1]["dt"]
  tokens = sum(int(((np.asarray(r["token_times"]) > t0) & (np.asarray(r["token_times"]) <= t1))
                   .sum()) for r in log.requests)
  wall = log.wall[lo:hi + 1]
  step_s, host_s = sum(w["step_s"] for w in wall), sum(w["host_s"] for w in wall)
  return dict(steps=len(window), tokens=tokens, tok_s=tokens / (step_s + host_s),
              host_fraction=host_s / step_s, step_ms=1e3 * step_s / len(window),
              host_ms=1e3 * host_s / len(window), compiles=summary["compiles_after_warmup"],
              warm_compiles=summary["compiles_warmup"])


def compare(rate):
  out = {}
  for batching in ("continuous", "static"):
    cfg = _cfg(batching=batching)
    cfg.workload.arrival.rate = rate
    with tempfile.TemporaryDirectory() as d:
      out[batching], _ = run.serve(cfg, d, log=lambda *_: None)
  return out


def _dist(d):
  if d.kind == "lognormal":
    return f"lognormal(median {d.median:g}, sigma {d.sigma:g}) in [{d.low}, {d.high}]"
  return {"fixed": f"fixed {d.value}", "uniform": f"uniform [{d.low}, {d.high}]",
          "list": f"from {tuple(d['values'])}"}[d.kind]


def main(argv):
  del argv
  sat = saturated()
  rate = _RATE.value
  cmp_ = compare(rate)
  cfg = _cfg()
  lines = [
      f"\n## Serving simulator ({datetime.date.today()}, {common.machine()})\n",
      f"`python benchmarks/serving.py --size={_SIZE.value} --num_requests={_REQUESTS.value} "
      f"--rate={rate:g}`; "
      f"{_SIZE.value} model (random init), {cfg.serve.max_num_seqs} slots, buckets "
      f"B={tuple(cfg.serve.buckets.decode_rows)} P={tuple(cfg.serve.buckets.prefill_rows)} "
      f"C={tuple(cfg.serve.buckets.chunk_lens)}, prompts {_dist(cfg.workload.prompt_len)}, "
      f"outputs {_dist(cfg.workload.output_len)}, ignore_eos.\n",
      "| saturated, measured clock | value |", "|---|---|",
      f"| steady-state output tok/s (wall) | {sat['tok_s']:.0f} |",
      f"| steady-state steps / tokens | {sat['steps']} / {sat['tokens']} |",
      f"| step wall time (mean) | {sat['step_ms']:.2f} ms |",
      f"| scheduler host time per step (mean) | {sat['host_ms']:.3f} ms |",
      f"| host time / step time | {sat['host_fraction']:.2%} |",
      f"| compiles during warm-up / after warm-up | {sat['warm_compiles']} / {sat['compiles']} |",
      "",
      f"Same Poisson workload ({rate} req/s), cost_model clock (virtual time):\n",
      "| batching | output tok/s | req/s | TTFT p50 / p99 ms | TPOT p50 ms | E2EL p50 / p99 ms "
      "| steps |", "|---|---|---|---|---|---|---|"]
  for name, s in cmp_.items():
    lines.append(f"| {name} | {s['output_throughput']:.0f} | {s['request_throughput']:.2f} | "
                 f"{s['ttft_ms']['median']:.0f} / {s['ttft_ms']['p99']:.0f} | "
                 f"{s['tpot_ms']['median']:.1f} | {s['e2el_ms']['median']:.0f} / "
                 f"{s['e2el_ms']['p99']:.0f} | {s['steps']} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if _APPEND.value:
    with open(os.path.join(os.path.dirname(__file__), "RESULTS.md"), "a") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
