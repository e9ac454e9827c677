r"""Serving simulator config: the default model (configs/base.py) behind a continuous-batching engine.

  python scripts/serve.py --config=configs/serve_default.py --workdir=runs/default
  python scripts/serve.py --config=configs/serve_default.py:size=tiny --workdir=runs/tiny \
      --config.workload.arrival.rate=50 --config.serve.batching=static

Arg (big_vision style): `size=base|tiny` picks the model (tiny also shrinks the engine to fit it).
Virtual time (clock.mode=cost_model) comes from the clock profile for the model (profiles/).
"""
import ml_collections

from configs import base
from moe_serve import bundled
from moe_serve import config as config_lib

# The corpus domains (moe_serve/data/corpus.py), so a corpus-backed prompt source plugs in.
DOMAINS = ("add", "reverse", "sort", "lookup", "prose", "code")


def _lengths(kind, value, low, high, median=None, sigma=0.5, values=(16, 32)):
  return ml_collections.ConfigDict(dict(kind=kind, value=value, low=low, high=high,
                                        median=float(median or value), sigma=sigma,
                                        values=values))


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size="base")
  cfg = base.get_config(f"size={arg.size}")
  tiny = arg.size == "tiny"
  # base: the bundled trained model's weights (MODEL.md); "" = random init from cfg.seed.
  cfg.params_dir = "" if tiny else bundled.DEFAULT_DIR
  # Serving dispatch: only the routed (kept) pairs cost (model/dispatch_sorted.py); training
  # configs keep configs/base.py's differentiable backends.
  cfg.model.router.dispatch = "sorted"
  # One device unless asked: scripts/serve.py and calibrate.py build this mesh and serve on it;
  # e.g. --config.mesh.data=2 --config.mesh.expert=4 on 8 devices (docs/sharding.md).
  cfg.mesh.update(data=1, expert=1, tensor=1)

  cfg.serve = ml_collections.ConfigDict(dict(
      # fcfs | priority (smaller first) | sjf (prompt + max_new_tokens) | lpm (longest cached
      # prefix first; needs prefix_cache)
      policy="fcfs",
      batching="continuous",  # continuous | static (fill a batch, run it to completion)
      max_num_seqs=8 if tiny else 64,  # slots
      max_num_batched_tokens=24 if tiny else 192,  # decode + prefill tokens per step
      kv_block_size=16,
      kv_num_blocks=32 if tiny else 1024,  # 1024 * 16 tokens = every slot full at max_len 256
      eos_id=2,  # tokenizer.EOS
      ignore_eos=False,  # True: every request runs to max_new_tokens (benchmarks)
      domains=DOMAINS,
      record_routing=False,  # per-request drops, when the step can return routing records
      replay_routing=False,  # steps take forced routing codes: Engine.run(replay=...) (replay.py)
      prompt_logprobs=False,  # log p(prompt[q] | prompt[:q]) per request (NLL via serving)
      # Plan and launch each step while the one before runs (serving/loop/overlap.py): the same
      # records, host work hidden behind device time. Single-process runs only.
      overlap=False,
      # Reuse the KV of cached full blocks of earlier prompts (serving/loop/prefix_cache.py; vLLM's
      # automatic prefix caching). Off: every prompt is computed from scratch.
      prefix_cache=False,
      tensorboard=False,
      plots=True,  # PNGs under <workdir>/plots (latency CDFs, load over time); needs matplotlib
      # Step shapes: decode rows B, prefill rows P, chunk length C. With model.batch_invariant
      # a request's bits do not depend on them; without it only one value each (fixed shapes)
      # and one kv length keep them (docs/design.md contract 2). Chunks are max(chunk_lens) long.
      buckets=ml_collections.ConfigDict(dict(
          decode_rows=(8,) if tiny else (64,),
          prefill_rows=(0, 2) if tiny else (0, 4),
          chunk_lens=(8,) if tiny else (32,),
          # Cache positions attention reads: the smallest of these (and model.max_len) that
          # holds the step's longest row, so a step's attention cost follows the context held.
          # Each value multiplies the compiles; () = always max_len.
          kv_lens=() if tiny else (64, 128),
      )),
  ))
  # cost_model prices each step's features (docs/serving.md, Virtual time) with a clock profile:
  # `auto` finds the one scripts/calibrate.py made for this model and step options (profiles/;
  # the bundled model's were made on the benchmarks/RESULTS.md machine), a path names one, ""
  # uses `coef`. The tiny model has no profile: its coefficients are round numbers for tests and
  # smoke runs (steps of about 16 ms, so that a tiny study's traffic overlaps), not a measurement.
  cfg.clock = ml_collections.ConfigDict(dict(
      mode="cost_model",  # cost_model (reproducible) | measured (wall time of each step)
      profile="" if tiny else "auto",
      coef=ml_collections.ConfigDict(dict(
          fixed=1.2e-2, decode_rows=1.6e-4, prefill_tokens=1.6e-4, decode_kv=1e-8,
          prefill_kv=1e-8, capacity_pairs=1e-7, expert_rows=1e-7, a2a_rows=1e-7)),
  ))
  cfg.workload = ml_collections.ConfigDict(dict(
      seed=0,
      num_requests=64 if tiny else 512,
      arrival=ml_collections.ConfigDict(dict(kind="poisson", rate=20.0, burstiness=1.0,
                                             rate_end=40.0)),
      prompt_len=_lengths("uniform", 12, 4, 24) if tiny else _lengths("lognormal", 48, 8, 160),
      output_len=_lengths("uniform", 8, 2, 16) if tiny else _lengths("uniform", 64, 16, 96),
      mix=ml_collections.ConfigDict({d: 1.0 for d in DOMAINS}),
      temperature=0.0, top_k=0, top_p=1.0,
      num_priorities=1,  # priorities drawn uniformly from 0..num_priorities-1
      # Prompts of generated requests and of token-count traces: synthetic (random bytes of a
      # per-domain alphabet) | eval (the eval set) | corpus (held-out corpus examples).
      prompt_source="synthetic" if tiny else "eval",
      trace="",  # a trace to replay instead (docs/traces.md)
      trace_format="jsonl",  # jsonl (ours) | sharegpt | burstgpt | azure | mooncake
      time_scale=1.0,  # trace arrival times multiplied by this (0.5: twice the rate)
      length_scale=1.0,  # trace token counts multiplied by this (>= 1 each; mooncake: blocks)
      max_requests=0,  # serve the first N requests of the trace (0: all)
      skip_bad_lines=False,  # True: bad trace lines are skipped and listed, not an error
  ))
  return cfg
