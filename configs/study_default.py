r"""The default study (the README's first command): determinism, serving and quality of the bundled
model against capacity scope x capacity factor at one load, N repeats of each of 12 targets (two
per domain, 64 tokens each), plus the numerical arm (dropless, step shapes varying with load).

  python scripts/sweep.py --config=configs/study_default.py --workdir=runs/study
  python scripts/sweep.py --config=configs/study_default.py:size=tiny --workdir=runs/smoke

Arg (big_vision style): `size=base` (the bundled trained model, models/default) or `size=tiny`
(random-init tiny model: seconds, for tests). Single values: `--config.study.repeats=10`,
`--config.study.load=60`. The grid is `sweep.axes`: (dotted config key, values) pairs, or
((key, key, ...), (values tuple, ...)) for settings that vary several keys together.
"""
import ml_collections

from configs import serve_default
from moe_serve import bundled
from moe_serve import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size="base")
  tiny = arg.size == "tiny"
  cfg = serve_default.get_config(f"size={arg.size}")
  if not tiny:  # the bundled model's architecture (the router is the study's own, below)
    cfg.model = bundled.load_model_config()
  else:
    cfg.model.max_len = 160  # eval text examples: 64 + 64 characters with BOS
  cfg.params_dir = "" if tiny else bundled.DEFAULT_DIR  # "" = random init from cfg.seed
  cfg.model.router.update(kind="topk", priority="token", dispatch="gather", group_size=16)

  # Fixed step shapes (one bucket) and a token budget that never splits a chunk: a request's
  # steps then look the same alone and in traffic, so only routing can tell them apart.
  # Chunks of 32 make full steps common (a 64-token chunk is rarely full): batch-scope contention
  # at capacity factor 1.0 then reaches most targets (measured in docs/study.md).
  b, p, c = (8, 2, 8) if tiny else (24, 2, 32)
  cfg.serve.update(max_num_seqs=b, max_num_batched_tokens=b + p * c, record_routing=True,
                   prompt_logprobs=True)
  # Attention reads all of max_len (kv_lens=()): one compile per step shape in both arms, and
  # with model.batch_invariant off a kv bucket could change bits on its own (docs/serving.md).
  cfg.serve.buckets.update(decode_rows=(b,), prefill_rows=(p,), chunk_lens=(c,), kv_lens=())
  cfg.serve.kv_num_blocks = b * -(-cfg.model.max_len // cfg.serve.kv_block_size)

  # Background prompts from the eval set (both sizes); a trace replaces the generated traffic.
  # Base: 160 requests, traffic for the targets' whole life.
  cfg.workload.update(num_requests=24 if tiny else 160, prompt_source="eval")
  cfg.workload.prompt_len.update(kind="uniform", low=8, high=c if tiny else 64)
  cfg.workload.output_len.update(kind="uniform", low=4 if tiny else 8, high=8 if tiny else 24)

  cfg.study = ml_collections.ConfigDict(dict(
      # traffic (random injection) | composition (controlled co-requests) | prefix (co-requests
      # share the target's prompt, computing the blocks it reuses: needs serve.prefix_cache)
      mode="traffic",
      seed=0,
      repeats=4 if tiny else 12,
      target_domains=("add", "sort", "prose") if tiny else serve_default.DOMAINS,
      targets_per_domain=1 if tiny else 2,
      max_new_tokens=8 if tiny else 64,  # targets ignore EOS: every completion is this long
      arm="routing",  # routing | numerical (dropless, numerical_buckets: shapes vary with load)
      numerical_buckets=ml_collections.ConfigDict(dict(
          decode_rows=(2, 4, 8) if tiny else (8, 16, 24),
          prefill_rows=(0, 1, 2),
          chunk_lens=(8,) if tiny else (32,))),
      replay="none",  # none | solo: force each target's solo routing in its repeats (causality)
      load=40.0 if tiny else 80.0,  # background arrivals, requests/s of virtual time (None: workload's)
      capacity_factor=1.0,  # the router's prefill and decode factors (None: leave them)
      inject_after_s=0.3 if tiny else 0.4,  # let the background fill the engine first
      inject_window_s=0.3,
      co_requests=7,  # composition/prefix modes: co-requests per target
      co_domains="mixed",  # composition/prefix modes: same (the target's domain) | mixed
      co_max_new_tokens=16,
      quality_per_domain=4 if tiny else 25,  # eval examples per domain (tasks and text)
      quality_max_new_tokens=8 if tiny else 16,
  ))
  # One joint axis: the routing arm at scope x capacity factor (dropless `none` once: the factor
  # does not apply), then the numerical arm with model.batch_invariant off and on (shapes follow
  # the load; on, every repeat is bitwise its solo run: contract 2).
  cfg.sweep = ml_collections.ConfigDict(dict(axes=(
      (("model.router.capacity_scope", "study.capacity_factor", "study.arm", "study.replay",
        "model.batch_invariant"), (
            ("batch", 1.0, "routing", "none", False), ("batch", 1.25, "routing", "none", False),
            ("batch", 2.0, "routing", "none", False), ("sequence", 1.0, "routing", "none", False),
            ("sequence", 1.25, "routing", "none", False),
            ("sequence", 2.0, "routing", "none", False), ("none", 1.0, "routing", "none", False),
            ("none", 1.0, "numerical", "none", False), ("none", 1.0, "numerical", "none", True))),
  )))
  if tiny:
    cfg.sweep.axes = (("model.router.capacity_scope", ("batch", "none")),
                      ("study.capacity_factor", (1.0,)))
  return cfg
