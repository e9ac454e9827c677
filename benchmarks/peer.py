r"""moe_serve against Hugging Face transformers on the same weights and workload, interleaved.

  pip install -e '.[peer]'                    # torch (CPU) + transformers, not in the test install
  python benchmarks/peer.py                   # prints the table
  python benchmarks/peer.py --append          # ... and appends it to benchmarks/RESULTS.md
  python benchmarks/peer.py --peer_python=/tmp/hf/bin/python   # torch in another venv
  python benchmarks/peer.py --configs=none:sorted:8,none:sorted:16   # prefill rows per step
  python benchmarks/peer.py --configs=none:sorted:16,none:sorted:16:overlap   # serve.overlap
  python benchmarks/peer.py --configs=none:sorted:16,none:sorted:16:inv   # model.batch_invariant

The model is a tiny Mixtral (hidden 256, 4 layers, 8 heads / 4 KV heads, 8 experts top-2, expert
hidden 512, vocabulary 512) built with `transformers` from a seed and saved as float32
safetensors; moe_serve imports that directory through its one loading path (moe_serve/hf). The
workload: 64 requests x (64-token random prompt + exactly 64 new tokens), greedy, all arriving
at t=0. Each round times HF `generate` at batch 32 and at batch 64 (benchmarks/peer_hf.py, a
worker process that owns torch) and every moe_serve config (measured clock, `Engine.run` wall
time after warm-up), one after the other, so load from other processes on this shared machine
hits every case alike; the table gives medians over rounds. Output tokens/s x FLOPs per token
(2 x the parameters a token uses) against the matmul peak measured in the same run is the
fraction of the FLOP limit. Greedy agreement with HF says the weights really are the same.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from configs import serve_default
from moe_serve import loading
from moe_serve.serving.stream import request as request_lib
from moe_serve.serving import run as serve_run

import common  # benchmarks/common.py (the script's folder is on sys.path)

_APPEND = flags.DEFINE_bool("append", False, "Append the results to benchmarks/RESULTS.md.")
_PEER_PYTHON = flags.DEFINE_string("peer_python", sys.executable,
                                   "Python with torch + transformers for the HF worker.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_REQUESTS = flags.DEFINE_integer("num_requests", 64, "Requests (prompts) per run.")
_PROMPT = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "New tokens per request (exactly).")
_PREFILL_ROWS = flags.DEFINE_integer(
    "prefill_rows", 16, "moe_serve's prefill rows (64-token chunks) per step, for configs that do "
    "not name theirs; on the 2-core CPU 16 was 1-4% faster than 8 in two interleaved runs and 32 "
    "within noise of both (benchmarks/RESULTS.md, 'Peer: prefill rows per step').")
_CONFIGS = flags.DEFINE_list("configs", ["none:sorted", "none:sorted:16:overlap", "none:gather"],
                             "moe_serve configs to time, scope:dispatch[:prefill_rows[:overlap]"
                             "[:inv]] each (overlap: serve.overlap, docs/serving.md; inv: "
                             "model.batch_invariant).")

# Idle time before each timed case, so that the other side's worker threads (torch's OpenMP
# pool, XLA's Eigen pool) have stopped spinning and do not steal the cores.
_PAUSE_S = 1.0
MIXTRAL = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
               num_attention_heads=8, num_key_value_heads=4, num_local_experts=8,
               num_experts_per_tok=2, max_position_embeddings=256, rope_theta=10000.0,
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


class HFWorker:
  """benchmarks/peer_hf.py in a subprocess, one JSON line per command."""

  def __init__(self, python):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_hf.py")
    self.proc = subprocess.Popen([python, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)

  def ask(self, **msg):
    self.proc.stdin.write(json.dumps(msg) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the HF worker ({_PEER_PYTHON.value}) died: does it have torch and "
                         "transformers (pip install -e '.[peer]')?")
    return json.loads(line)

  def close(self):
    self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


def moe_engine(hf_dir, scope, dispatch_name, slots, prefill_rows=8, overlap=False,
               invariant=False):
  """A warmed-up engine for the HF directory: `slots` decode rows, `prefill_rows` rows of 64,
  the overlapped loop if `overlap`, model.batch_invariant if `invariant`."""
  cfg = serve_default.get_config("size=base")
  cfg.params_dir = hf_dir
  cfg.model.max_len = 2 * (_PROMPT.value + _NEW.value)
  cfg.model = loading.resolve(cfg, log=lambda *_: None).model
  cfg.model.router.update(capacity_scope=scope, dispatch=dispatch_name)
  cfg.model.batch_invariant = invariant
  cfg.clock.mode = "measured"
  chunk = 64
  blocks_per_row = -(-cfg.model.max_len // cfg.serve.kv_block_size)
  cfg.serve.update(max_num_seqs=slots, max_num_batched_tokens=slots + prefill_rows * chunk,
                   ignore_eos=True, kv_num_blocks=slots * blocks_per_row, overlap=overlap)
  cfg.serve.buckets.update(decode_rows=(slots,), prefill_rows=(0, prefill_rows),
                           chunk_lens=(chunk,))
  engine = serve_run.build_engine(cfg)
  engine.warmup()
  return engine


def parse_config(spec):
  """'scope:dispatch[:rows[:overlap][:inv]]' -> moe_engine's (scope, dispatch, slots, rows,
  overlap, invariant)."""
  scope, dispatch_name, *rest = spec.split(":")
  opts = rest[1:]
  if ((rest and not rest[0].isdigit()) or len(set(opts)) != len(opts)
      or not set(opts) <= {"overlap", "inv"}):
    raise app.UsageError(f"--configs entry {spec!r} is not scope:dispatch[:rows[:overlap][:inv]] "
                         "(e.g. none:sorted:16:overlap, none:sorted:16:inv)")
  return (scope, dispatch_name, 64, int(rest[0]) if rest else _PREFILL_ROWS.value,
          "overlap" in opts, "inv" in opts)


def matmul_peak_gflops(n=1024, repeats=20):
  """float32 [n, n] @ [n, n] on the default device: the best of `repeats`, GFLOP/s."""
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  best = min(_timed(f, a) for _ in range(repeats))
  return 2 * n ** 3 / best / 1e9


def _timed(f, *args):
  t0 = time.perf_counter()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - t0


def main(argv):
  del argv
  specs = {spec: parse_config(spec) for spec in _CONFIGS.value}
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, MIXTRAL["vocab_size"], (_REQUESTS.value, _PROMPT.value)).tolist()
  n_out = _REQUESTS.value * _NEW.value
  worker = HFWorker(_PEER_PYTHON.value)
  with tempfile.TemporaryDirectory() as hf_dir:
    info = worker.ask(cmd="build", dir=hf_dir, seed=0, config=MIXTRAL)
    engines = {}
    for spec, args in specs.items():
      engines[spec] = moe_engine(hf_dir, *args)
    reqs = [request_lib.Request(id=i, prompt=p, max_new_tokens=_NEW.value, arrival=0.0,
                                domain="prose") for i, p in enumerate(prompts)]
    times = {k: [] for k in ["hf b32", "hf b64", *engines]}
    tokens = {}
    host = {k: [] for k in engines}  # the engine's host_s over its step_s + host_s
    for _ in range(_ROUNDS.value):
      for b in (32, 64):
        time.sleep(_PAUSE_S)
        out = worker.ask(cmd="generate", prompts=prompts, batch=b, new=_NEW.value)
        times[f"hf b{b}"].append(out["wall_s"])
        tokens["hf"] = out["tokens"]
      for spec, engine in engines.items():
        time.sleep(_PAUSE_S)
        t0 = time.perf_counter()
        log = engine.run(reqs)
        times[spec].append(time.perf_counter() - t0)
        tokens[spec] = [r["tokens"] for r in sorted(log.requests, key=lambda r: r["id"])]
        host[spec].append(sum(w["host_s"] for w in log.wall) /
                          sum(w["step_s"] + w["host_s"] for w in log.wall))
    worker.close()
  peak = matmul_peak_gflops()
  per_tok_flops = 2 * active_params()
  tps = {k: n_out / float(np.median(v)) for k, v in times.items()}
  rows = []
  for k, v in tps.items():
    agree = ("" if k.startswith("hf") else
             f"{np.mean(np.array(tokens[k]) == np.array(tokens['hf'])):.3f}")
    rows.append([k, f"{v:.0f}", f"{v / tps['hf b32']:.2f}", f"{v / tps['hf b64']:.2f}",
                 f"{v * per_tok_flops / 1e9 / peak:.3f}", agree,
                 f"{np.median(host[k]):.2%}" if k in host else ""])
  desc = (f"tiny Mixtral ({info['params'] / 1e6:.1f}M parameters, float32), "
          f"{_REQUESTS.value} requests x ({_PROMPT.value} prompt + {_NEW.value} new tokens), greedy, "
          f"all at t=0; {_ROUNDS.value} interleaved rounds, medians. HF: torch {info['torch']}, "
          f"transformers {info['transformers']}, {info['threads']} threads, attention "
          f"{info['attn']}, experts {info['experts']}. moe_serve: 64 slots, prefill R x 64 "
          f"per step (R: a config's third field, else {_PREFILL_ROWS.value}), measured clock; "
          "`overlap`: serve.overlap; `inv`: model.batch_invariant. Host share: the engine's "
          "host_s over step_s + host_s (wall.jsonl; docs/serving.md, Overlapped loop). "
          f"Matmul peak {peak:.0f} GFLOP/s (float32 1024^3); {per_tok_flops / 1e6:.1f} MFLOP per "
          f"token.")
  common.report("Peer: moe_serve vs HF transformers generate", desc,
                ["run", "output tok/s", "vs HF b32", "vs HF b64", "of FLOP limit",
                 "greedy agreement with HF", "host share (moe_serve)"], rows,
                append_to=os.path.join(os.path.dirname(__file__), "RESULTS.md")
                if _APPEND.value else None)


def active_params():
  """Parameters one token uses: attention, router, k of the experts, embedding row, LM head."""
  c = MIXTRAL
  d, f, h = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
  attn = d * d * 2 + d * c["num_key_value_heads"] * h * 2
  ffn = c["num_experts_per_tok"] * 3 * d * f + d * c["num_local_experts"]
  return c["num_hidden_layers"] * (attn + ffn) + d * c["vocab_size"]


if __name__ == "__main__":
  app.run(main)
