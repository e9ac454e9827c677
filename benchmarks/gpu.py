r"""Decode on one accelerator against the memory-bandwidth limit, and against HF transformers.

  python benchmarks/gpu.py                     # Mixtral-shaped 1.66B model, bf16 (about 5 min on one H100)
  python benchmarks/gpu.py --append            # ... and appends the table to benchmarks/RESULTS.md
  python benchmarks/gpu.py --size=tiny --hf=false --rounds=1   # seconds, on CPU: checks the script

Model (`--size=gpu`): hidden 2048, 4 layers, 16 query / 8 KV heads of 128, 8 experts top-2 of
hidden 8192, vocabulary 1024, parameters and compute in bfloat16 (`model.param_dtype`), random
weights. Workload: `--num_requests` x (64-token prompt + exactly 64 new tokens), greedy, all at
t=0, `--slots` decode rows, measured clock. Per dispatch backend, over the decode-only steps with
every slot busy: the step wall time, the bytes such a step must read from memory (every expert's
weights, since 2 x slots pairs touch all 8 experts, plus the attention weights and the keys and
values of the cache positions read), that over the step time as a fraction of the device's peak
bandwidth (`--peak_gbps`, or a table of known devices), and the engine's host time as a
fraction of the step: each backend with the plain loop (all host time counts) and with
`serve.overlap` (only host time the device may have waited for; docs/serving.md, Overlapped
loop), on the same parameters. HF (`--hf`, needs torch with CUDA + transformers): `generate` of
the same shapes in bf16 at batch `slots` and 2 x `slots`, with its own random weights (speed
only), interleaved with the moe_serve runs in `--rounds` rounds.
"""
import os
import subprocess
import sys
import time

from absl import app, flags
import jax
import numpy as np

from configs import serve_default
from moe_serve.serving.stream import request as request_lib
from moe_serve.serving import run as serve_run

import common  # benchmarks/common.py (the script's folder is on sys.path)

_APPEND = flags.DEFINE_bool("append", False, "Append the results to benchmarks/RESULTS.md.")
_SIZE = flags.DEFINE_enum("size", "gpu", ["gpu", "tiny"], "gpu: the Mixtral-shaped model.")
_DISPATCHES = flags.DEFINE_list("dispatches", ["sorted", "gather", "ragged"],
                                "Dispatch backends to time (capacity_scope none).")
_SLOTS = flags.DEFINE_integer("slots", 64, "Decode rows (slots).")
_REQUESTS = flags.DEFINE_integer("num_requests", 128, "Requests per run.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Interleaved rounds.")
_HF = flags.DEFINE_bool("hf", True, "Also time HF transformers generate (torch + CUDA).")
_PEAK = flags.DEFINE_float("peak_gbps", 0.0, "Peak memory bandwidth, GB/s (0: from the table).")

PROMPT, NEW = 64, 64
# Peak HBM bandwidth by device kind (vendor figures, GB/s); --peak_gbps overrides.
PEAK_GBPS = {"H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H200": 4800.0,
             "A100-SXM4-80GB": 2039.0, "A100-SXM4-40GB": 1555.0}
SHAPES = {
    "gpu": dict(vocab_size=1024, d_model=2048, num_layers=4, num_heads=16, num_kv_heads=8,
                head_dim=128, num_experts=8, d_ff_expert=8192, dtype="bfloat16"),
    "tiny": dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, num_experts=8, d_ff_expert=128, dtype="float32"),
}


def model_config():
  cfg = serve_default.get_config("size=base")
  cfg.params_dir = ""  # random init from cfg.seed
  s = SHAPES[_SIZE.value]
  cfg.model.update(max_len=2 * (PROMPT + NEW), param_dtype=s["dtype"], tie_embeddings=False,
                   moe_every=1, shared_expert=False, **s)
  cfg.model.router.update(kind="topk", k=2, capacity_scope="none")
  return cfg


def engine_for(dispatch, overlap, params=None):
  """(cfg, warmed-up engine); `params` from an engine built before (same shapes) saves memory."""
  cfg = model_config()
  cfg.model.router.dispatch = dispatch
  cfg.clock.mode = "measured"
  slots = _SLOTS.value
  cfg.serve.update(max_num_seqs=slots, max_num_batched_tokens=slots + 4 * PROMPT,
                   ignore_eos=True, eos_id=0, overlap=overlap,
                   kv_num_blocks=slots * -(-cfg.model.max_len // cfg.serve.kv_block_size))
  cfg.serve.buckets.update(decode_rows=(slots,), prefill_rows=(0, 4), chunk_lens=(PROMPT,),
                           kv_lens=(PROMPT, PROMPT + NEW))
  engine = serve_run.build_engine(cfg, params=params)
  engine.warmup()
  return cfg, engine


def bytes_per_decode_step(cfg, kv_len):
  """Weights every full decode step reads (all of them: 2 x slots pairs reach every expert;
  the embedding only by row) plus the keys and values of `kv_len` positions per slot."""
  m = cfg.model
  item = np.dtype(m.param_dtype).itemsize if m.param_dtype != "bfloat16" else 2
  per_layer = (m.d_model * m.num_heads * m.head_dim * 2 + m.d_model * m.num_kv_heads *
               m.head_dim * 2 + m.d_model * m.num_experts + 3 * m.num_experts * m.d_model *
               m.d_ff_expert)
  weights = item * (m.num_layers * per_layer + m.d_model * m.vocab_size)
  kv_item = 2 if m.dtype == "bfloat16" else 4
  kv = kv_item * 2 * m.num_layers * _SLOTS.value * kv_len * m.num_kv_heads * m.head_dim
  return weights + kv


def one_run(engine, reqs):
  t0 = time.perf_counter()
  log = engine.run(reqs)
  wall = time.perf_counter() - t0
  full = [(s, w) for s, w in zip(log.steps, log.wall)
          if s["prefill_rows"] == 0 and s["decode"] == _SLOTS.value]
  return dict(tok_s=len(reqs) * NEW / wall,
              step_s=float(np.median([w["step_s"] for _, w in full])) if full else float("nan"),
              host=float(np.sum([w["host_s"] for _, w in full]) /
                         max(np.sum([w["step_s"] for _, w in full]), 1e-12)),
              kv_len=int(np.median([s["kv_len"] for s, _ in full])) if full else 0)


HF_WORKER = r"""
import json, sys, time, torch, transformers
c = json.loads(sys.argv[1]); torch.manual_seed(0)
model = transformers.MixtralForCausalLM(transformers.MixtralConfig(**c)).to("cuda", torch.bfloat16).eval()
for line in sys.stdin:
    b, n, new, prompt = json.loads(line)
    ids = torch.randint(3, c["vocab_size"], (n, prompt), device="cuda")
    torch.cuda.synchronize(); t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, b):
            x = ids[i:i + b]
            model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize(); print(json.dumps(n * new / (time.perf_counter() - t0)), flush=True)
"""


def hf_worker(cfg):
  m = cfg.model
  c = dict(vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.d_ff_expert,
           num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
           num_key_value_heads=m.num_kv_heads, head_dim=m.head_dim, num_local_experts=m.num_experts,
           num_experts_per_tok=2, max_position_embeddings=m.max_len, tie_word_embeddings=False)
  import json  # pylint: disable=import-outside-toplevel
  return subprocess.Popen([sys.executable, "-c", HF_WORKER, json.dumps(c)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)


def hf_tok_s(proc, batch):
  import json  # pylint: disable=import-outside-toplevel
  proc.stdin.write(json.dumps([batch, _REQUESTS.value, NEW, PROMPT]) + "\n")
  proc.stdin.flush()
  line = proc.stdout.readline()
  if not line:
    raise RuntimeError("the HF worker died (torch with CUDA and transformers installed?)")
  return float(line)


def main(argv):
  del argv
  t_start = time.perf_counter()
  rng = np.random.default_rng(0)
  cfg = model_config()
  reqs = [request_lib.Request(id=i, prompt=rng.integers(3, cfg.model.vocab_size, PROMPT).tolist(),
                              max_new_tokens=NEW, domain="prose") for i in range(_REQUESTS.value)]
  engines, params = {}, None
  for d in _DISPATCHES.value:
    for overlap in (False, True):
      name = d + (" overlap" if overlap else "")
      engines[name] = engine_for(d, overlap, params)
      params = engines[name][1].params
  proc = hf_worker(cfg) if _HF.value else None
  res = {d: [] for d in engines}
  hf = {b: [] for b in (_SLOTS.value, 2 * _SLOTS.value)} if proc else {}
  for _ in range(_ROUNDS.value):
    for d, (_, engine) in engines.items():
      res[d].append(one_run(engine, reqs))
    for b in hf:
      hf[b].append(hf_tok_s(proc, b))
  if proc:
    proc.stdin.close()
    proc.wait(timeout=120)
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  peak = _PEAK.value or next((v for k, v in PEAK_GBPS.items() if k in kind), float("nan"))
  rows = []
  best_hf = max((float(np.median(v)) for v in hf.values()), default=float("nan"))
  for d, runs in res.items():
    med = {k: float(np.median([r[k] for r in runs])) for k in ("tok_s", "step_s", "host")}
    nbytes = bytes_per_decode_step(engines[d][0], runs[-1]["kv_len"])
    util = nbytes / med["step_s"] / (peak * 1e9)
    rows.append([d, f"{med['tok_s']:.0f}", f"{1e3 * med['step_s']:.2f}", f"{nbytes / 1e9:.3f}",
                 f"{util:.1%}", f"{med['host']:.1%}", f"{med['tok_s'] / best_hf:.2f}"])
  for b, v in hf.items():
    rows.append([f"HF generate, batch {b}", f"{np.median(v):.0f}", "", "", "", "", ""])
  m = cfg.model
  desc = (f"{_SIZE.value} model (d {m.d_model}, {m.num_layers} layers, {m.num_experts} experts "
          f"top-2 of {m.d_ff_expert}, {m.param_dtype} weights, random), {_REQUESTS.value} requests x "
          f"({PROMPT} + {NEW}), {_SLOTS.value} slots, {_ROUNDS.value} interleaved rounds, medians; "
          f"device {kind}, peak {peak:g} GB/s; whole command {time.perf_counter() - t_start:.0f} s. "
          "Step and host: decode-only steps with every slot busy.")
  common.report("Decode against the bandwidth limit", desc,
                ["run", "output tok/s", "decode step ms", "GB read per step", "of peak bandwidth",
                 "host / step", "vs best HF"], rows,
                append_to=os.path.join(os.path.dirname(__file__), "RESULTS.md")
                if _APPEND.value else None)


if __name__ == "__main__":
  app.run(main)
