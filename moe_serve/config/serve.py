"""The `serve` section of a serving config (engine, scheduler, buckets, prefix cache), and
`validate_serve`, which checks it with the `clock` and `workload` sections it runs with."""
from moe_serve.config.checks import ConfigError, boolean, choice, positive
from moe_serve.config.clock import validate_clock
from moe_serve.config.workload import validate_workload

SERVE_POLICIES = ("fcfs", "priority", "sjf", "lpm")
SERVE_BATCHING = ("continuous", "static")
MAX_SHAPE_BUCKETS = 32  # each bucket is one compilation of the step


def _check_prefix_cache(s):
  """serve.prefix_cache and what it does not combine with (yet)."""
  on = s.get("prefix_cache", False)
  if s.policy == "lpm" and not on:
    raise ConfigError("serve.policy=lpm orders requests by their cached prefix: set "
                      "serve.prefix_cache=true")
  if on and s.get("overlap", False):
    raise ConfigError("serve.prefix_cache with serve.overlap is not supported yet (a step "
                      "launched ahead could load a cached block before the step that computed "
                      "it has copied it into the pool); drop one")
  if on and s.get("prompt_logprobs", False):
    raise ConfigError("serve.prompt_logprobs needs every prompt position computed; a cached "
                      "prefix is not (vLLM recomputes such requests too): drop one")


def _check_buckets(s, m):
  """serve.buckets: the step shapes (one compile each) hold the slots and the longest chunk."""
  b = {k: tuple(s.buckets[k]) for k in ("decode_rows", "prefill_rows", "chunk_lens")}
  for key, opts in b.items():
    low = 1 if key == "chunk_lens" else 0
    if not opts or any(not isinstance(o, int) or o < low for o in opts):
      raise ConfigError(f"serve.buckets.{key}={opts!r} must be a non-empty list of ints >= {low}")
  if max(b["decode_rows"]) < s.max_num_seqs:
    raise ConfigError(f"serve.buckets.decode_rows={b['decode_rows']} cannot hold "
                      f"serve.max_num_seqs={s.max_num_seqs} decode rows; add {s.max_num_seqs}")
  if max(b["prefill_rows"]) < 1:
    raise ConfigError(f"serve.buckets.prefill_rows={b['prefill_rows']} has no bucket with a "
                      "prefill row; add e.g. 1")
  kv_lens = tuple(s.buckets.get("kv_lens", ()))
  if any(not isinstance(o, int) or not 1 <= o <= m.max_len for o in kv_lens):
    raise ConfigError(f"serve.buckets.kv_lens={kv_lens!r} must be ints in [1, model.max_len="
                      f"{m.max_len}] (max_len itself is always a bucket)")
  n_buckets = (len(b["decode_rows"]) * len(b["prefill_rows"]) * len(b["chunk_lens"]) *
               len(set(kv_lens) | {m.max_len}))
  if n_buckets > MAX_SHAPE_BUCKETS:
    raise ConfigError(f"serve.buckets give {n_buckets} step shapes (one compile each); keep it "
                      f"<= {MAX_SHAPE_BUCKETS} by listing fewer options")
  if s.max_num_batched_tokens < s.max_num_seqs + max(b["chunk_lens"]):
    raise ConfigError(
        f"serve.max_num_batched_tokens={s.max_num_batched_tokens} must be >= max_num_seqs "
        f"({s.max_num_seqs}) + the longest chunk ({max(b['chunk_lens'])}) so that a full step "
        f"of decodes never starves prefill; use >= {s.max_num_seqs + max(b['chunk_lens'])}")


def validate_serve(cfg):
  """Checks the `serve`, `clock` and `workload` sections of a serving config (the model section
  is `validate`'s; `validate_for(cfg, "serve")` runs both)."""
  s, m = cfg.serve, cfg.model
  choice(s.policy, "serve.policy", SERVE_POLICIES)
  choice(s.batching, "serve.batching", SERVE_BATCHING)
  if s.get("replay_routing", False) and m.router.kind not in ("topk", "hash"):
    raise ConfigError(f"serve.replay_routing needs model.router.kind topk or hash, not "
                      f"{m.router.kind!r}")
  positive(s, "serve", "max_num_seqs", "max_num_batched_tokens", "kv_block_size", "kv_num_blocks")
  _check_buckets(s, m)
  if not 0 <= s.eos_id < m.vocab_size:
    raise ConfigError(f"serve.eos_id={s.eos_id} is outside the vocabulary [0, {m.vocab_size})")
  for name in ("tensorboard", "plots", "overlap", "prefix_cache"):
    boolean(s.get(name, False), f"serve.{name}")
  _check_prefix_cache(s)
  if not s.domains or len(set(s.domains)) != len(s.domains):
    raise ConfigError(f"serve.domains={tuple(s.domains)} must be a non-empty list of unique names")
  validate_clock(cfg.clock)
  validate_workload(cfg.workload, s.domains)
  return cfg
