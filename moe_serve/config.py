"""Config parsing and validation: the one place that decides whether a config is usable.

Every check raises `ConfigError` naming the field, the bad value and what would be valid, and runs
before anything is compiled. Other modules add their checks here, not at their call sites.
"""
import ast
import difflib
import math

import ml_collections

from moe_serve import files

ROUTER_KINDS = ("topk", "expert_choice", "soft", "hash")
CAPACITY_SCOPES = ("batch", "group", "sequence", "none")
PRIORITIES = ("position", "token", "score")
DISPATCH_BACKENDS = ("einsum", "gather", "ragged", "sorted")
DTYPES = ("float32", "bfloat16", "float16")
MESH_AXES = ("data", "expert", "tensor")  # mesh axis order, outermost first


QK_NORMS = ("none", "head", "full")

# Model options added after the bundled model was exported, with the values that keep the
# original architecture; `with_model_defaults` fills them into older model sections.
MODEL_OPTION_DEFAULTS = dict(
    param_dtype="float32",  # dtype the parameters are stored in (compute is model.dtype)
    attn_bias=False,  # bias on the q/k/v projections (Qwen2-MoE)
    qk_norm="none",  # RMSNorm on queries and keys: none | head (over H, Qwen3) | full (OLMoE)
    tied_logit_scale=True,  # tied unembedding scaled by d_model**-0.5 (False: HF, unscaled)
    d_ff_shared=0,  # shared expert hidden width (0: d_ff_expert)
    shared_expert_gate=False,  # shared expert output times sigmoid(x . w) (Qwen2-MoE)
    # Every op's result for a row independent of the step's shape, kv bucket and other rows
    # (model/invariant.py): fixed row tiles for matmuls, fixed KV chunks for attention.
    batch_invariant=False,
)


def with_model_defaults(model_cfg):
  """`model_cfg` with every option of MODEL_OPTION_DEFAULTS present (missing ones default)."""
  with model_cfg.unlocked():
    for key, value in MODEL_OPTION_DEFAULTS.items():
      if key not in model_cfg:
        model_cfg[key] = value
  return model_cfg


class ConfigError(ValueError):
  """A config field holds a value the framework cannot use."""


def parse_arg(arg, **defaults):
  """Parses a big_vision style config arg `"size=tiny,experts=8"` over typed defaults.

  Values are converted to the type of their default (bool accepts true/false/1/0); keys not in
  `defaults` are rejected so a typo never passes silently.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if not item:
      continue
    key, sep, raw = item.partition("=")
    if not sep:
      raise ConfigError(f"config arg item {item!r} is not key=value; known keys: {sorted(defaults)}")
    if key not in defaults:
      raise ConfigError(f"unknown config arg {key!r}; known keys: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"config arg {key}={raw!r} is not a bool; use true or false")
      value = raw.lower() in ("true", "1")
    elif kind in (int, float):
      try:
        value = kind(ast.literal_eval(raw))
      except (ValueError, SyntaxError) as e:
        raise ConfigError(f"config arg {key}={raw!r} is not of type {kind.__name__}") from e
    else:
      value = raw
    out[key] = value
  return out


def _positive(cfg, prefix, *names):
  for name in names:
    value = cfg[name]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f"{prefix}.{name}={value!r} must be a positive integer")


def _choice(value, field, valid):
  if value not in valid:
    raise ConfigError(f"{field}={value!r} is not one of {list(valid)}")


def _divisors(n):
  return [d for d in range(1, n + 1) if n % d == 0]


def validate_model(m):
  """Checks a `config.model` ConfigDict; raises ConfigError on the first bad field."""
  _positive(m, "model", "vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
            "head_dim", "d_ff", "num_experts", "d_ff_expert", "moe_every", "max_len")
  if m.num_heads % m.num_kv_heads:
    raise ConfigError(
        f"model.num_heads={m.num_heads} must be divisible by model.num_kv_heads={m.num_kv_heads}; "
        f"valid num_kv_heads: {_divisors(m.num_heads)}")
  if m.head_dim % 2:
    raise ConfigError(f"model.head_dim={m.head_dim} must be even for rotary embeddings")
  if m.moe_every > m.num_layers:
    raise ConfigError(
        f"model.moe_every={m.moe_every} is out of range: use 1..model.num_layers={m.num_layers} "
        "(layer i is MoE when (i + 1) % moe_every == 0)")
  _choice(m.dtype, "model.dtype", DTYPES)
  for key in MODEL_OPTION_DEFAULTS:
    if key not in m:
      raise ConfigError(f"model.{key} is missing; start from configs/base.py (default "
                        f"{MODEL_OPTION_DEFAULTS[key]!r})")
  _choice(m.param_dtype, "model.param_dtype", DTYPES)
  _choice(m.qk_norm, "model.qk_norm", QK_NORMS)
  for key in ("attn_bias", "tied_logit_scale", "shared_expert_gate", "batch_invariant"):
    if not isinstance(m[key], bool):
      raise ConfigError(f"model.{key}={m[key]!r} must be true or false")
  if not isinstance(m.d_ff_shared, int) or m.d_ff_shared < 0:
    raise ConfigError(f"model.d_ff_shared={m.d_ff_shared!r} must be an integer >= 0 "
                      "(0: model.d_ff_expert)")
  if m.shared_expert_gate and not m.shared_expert:
    raise ConfigError("model.shared_expert_gate=True needs model.shared_expert=True")
  if not (isinstance(m.norm_eps, (int, float)) and 0 < m.norm_eps < 1):
    raise ConfigError(f"model.norm_eps={m.norm_eps!r} must be in (0, 1)")
  if not m.rope_theta > 0:
    raise ConfigError(f"model.rope_theta={m.rope_theta} must be > 0")
  validate_router(m.router, m.num_experts)


def validate_router(r, num_experts):
  """Checks `config.model.router` against the number of experts."""
  _choice(r.kind, "model.router.kind", ROUTER_KINDS)
  _choice(r.capacity_scope, "model.router.capacity_scope", CAPACITY_SCOPES)
  _choice(r.priority, "model.router.priority", PRIORITIES)
  _choice(r.dispatch, "model.router.dispatch", DISPATCH_BACKENDS)
  _positive(r, "model.router", "k", "group_size")
  if r.k > num_experts:
    raise ConfigError(
        f"model.router.k={r.k} exceeds model.num_experts={num_experts}; use 1..{num_experts}")
  if not isinstance(r.min_capacity, int) or r.min_capacity < 0:
    raise ConfigError(f"model.router.min_capacity={r.min_capacity!r} must be an integer >= 0")
  for name in ("capacity_factor_prefill", "capacity_factor_decode"):
    value = r[name]
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ConfigError(f"model.router.{name}={value!r} must be a finite number > 0")
  for name in ("jitter", "lb_loss_weight", "z_loss_weight"):
    if not r[name] >= 0:
      raise ConfigError(f"model.router.{name}={r[name]!r} must be >= 0")
  validate_routing_rules(r)
  if r.dispatch == "ragged" and r.capacity_scope != "none":
    raise ConfigError(
        f"model.router.dispatch='ragged' is dropless and needs capacity_scope='none', "
        f"got capacity_scope={r.capacity_scope!r}; use dispatch='einsum' or 'gather' to drop")


def validate_mesh(mesh_cfg, model_cfg, num_devices=None):
  """Checks `config.mesh` against the model (and the device count, if given).

  Returns the resolved sizes `(data, expert, tensor)` when `num_devices` is given (one `-1`
  takes the devices left over), else None. Sizes must divide what they shard: experts by
  `expert`; query heads, KV heads, FFN widths and the vocab by `tensor`.
  """
  sizes = [mesh_cfg[a] for a in MESH_AXES]
  for axis, value in zip(MESH_AXES, sizes):
    if not isinstance(value, int) or isinstance(value, bool) or not (value > 0 or value == -1):
      raise ConfigError(f"mesh.{axis}={value!r} must be a positive integer or -1 (fill the rest)")
  fills = [a for a, v in zip(MESH_AXES, sizes) if v == -1]
  if len(fills) > 1:
    raise ConfigError(f"mesh uses -1 for {len(fills)} axes {fills}; at most one axis may be -1")
  fixed = math.prod(v for v in sizes if v != -1)
  if num_devices is not None:
    if fixed > num_devices:
      raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices but only "
                        f"{num_devices} exist; shrink the mesh so its product is {num_devices}")
    if fills and num_devices % fixed:
      raise ConfigError(f"mesh fixed sizes multiply to {fixed}, which does not divide the "
                        f"{num_devices} devices, so mesh.{fills[0]}=-1 cannot fill the rest; "
                        f"use sizes whose product divides {num_devices}")
    if not fills and fixed != num_devices:
      raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {fixed} of {num_devices} "
                        f"devices; make the product {num_devices} or set one axis to -1")
    sizes = [num_devices // fixed if v == -1 else v for v in sizes]
  _, expert, tensor = sizes
  m = model_cfg
  checks = [(expert, "expert", "model.num_experts", m.num_experts)]
  checks += [(tensor, "tensor", f"model.{f}", m[f])
             for f in ("num_heads", "num_kv_heads", "d_ff", "d_ff_expert", "vocab_size")]
  if m.get("batch_invariant", False) and expert not in (1, -1):
    raise ConfigError(f"model.batch_invariant needs every expert on every device, but "
                      f"mesh.expert={expert}; use mesh.expert=1 (data or tensor may split)")
  for size, axis, field, value in checks:
    if size != -1 and value % size:
      raise ConfigError(f"{field}={value} is not divisible by mesh.{axis}={size}; use a "
                        f"mesh.{axis} in {_divisors(value)} or change {field}")
  return tuple(sizes) if num_devices is not None else None


def validate_routing_rules(r):
  """Checks the router fields that routing.py relies on beyond their types and ranges."""
  for name in ("capacity_factor_prefill", "capacity_factor_decode"):
    milli = r[name] * 1000
    if abs(milli - round(milli)) > 1e-6:
      raise ConfigError(
          f"model.router.{name}={r[name]!r} must be a multiple of 0.001 (capacities are computed "
          f"exactly in thousandths); use e.g. {round(milli) / 1000}")
  if r.kind == "soft" and r.capacity_scope not in ("batch", "group"):
    raise ConfigError(f"model.router.kind='soft' mixes the tokens of static instances and needs "
                      f"capacity_scope 'batch' or 'group', got {r.capacity_scope!r}")
  if r.kind == "expert_choice" and r.capacity_scope == "none":
    raise ConfigError("model.router.kind='expert_choice' needs a capacity (experts pick that many "
                      "tokens), got capacity_scope='none'; use 'batch', 'group' or 'sequence'")


def validate_serve_mesh(cfg, data):
  """ConfigError unless every step row count (`serve.buckets`) and the slot count
  (`serve.max_num_seqs`) are multiples of the mesh's `data` size: step rows and cache slots are
  sharded over `data`. `data` is the resolved size (after a -1 is filled)."""
  s = cfg.serve
  rows = {f"serve.buckets.{k}": tuple(s.buckets[k]) for k in ("decode_rows", "prefill_rows")}
  rows["serve.max_num_seqs"] = (s.max_num_seqs,)
  for field, values in rows.items():
    bad = [v for v in values if v % data]
    if bad:
      raise ConfigError(f"{field}={values if len(values) > 1 else values[0]!r} has {bad} not "
                        f"divisible by mesh.data={data} (rows and slots are sharded over data); "
                        f"use multiples of {data} or a smaller mesh.data")
  return cfg


def unknown_field(cfg, dotted):
  """None if `dotted` (e.g. "serve.max_num_seqs") names a field of `cfg`, else a message that
  names the full path and the nearest valid names."""
  node, done = cfg, []
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      valid = sorted(node.keys()) if hasattr(node, "keys") else []
      where = ".".join(done) or "the config"
      near = difflib.get_close_matches(part, valid, n=3, cutoff=0.5)
      hint = f"; did you mean {', '.join('.'.join(done + [n]) for n in near)}?" if near else ""
      if not valid:
        return f"unknown config field {dotted!r}: {where} is a value, not a section"
      listing = "" if near else f" (fields of {where}: {valid})"
      return f"unknown config field {dotted!r}: {where} has no field {part!r}{hint}{listing}"
    node = node[part]
    done.append(part)
  return None


def validate(cfg):
  """Validates a full experiment config (the parts present); returns it for chaining."""
  if "model" not in cfg:
    raise ConfigError("config has no `model` section; start from configs/base.py")
  validate_model(cfg.model)
  if "mesh" in cfg:
    validate_mesh(cfg.mesh, cfg.model)
  return cfg


def validate_train(cfg):
  """Checks the `data` and `train` sections of a training config (configs/train_default.py)."""
  for section in ("data", "train"):
    if section not in cfg:
      raise ConfigError(f"config has no `{section}` section; start from configs/train_default.py")
  d, t = cfg.data, cfg.train
  if cfg.model.router.dispatch == "sorted":
    raise ConfigError("model.router.dispatch='sorted' is for serving: its loop over the blocks "
                      "in use has a data-dependent length, which reverse-mode autodiff cannot "
                      "differentiate; train with 'gather' or 'einsum' (the parameters serve "
                      "under any backend)")
  _positive(d, "data", "batch_size", "seq_len")
  _positive(t, "train", "steps", "log_every", "eval_every", "checkpoint_every",
            "eval_examples_per_domain")
  if d.seq_len > cfg.model.max_len:
    raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_len={cfg.model.max_len}; "
                      f"lower data.seq_len or raise model.max_len")
  from moe_serve.data.corpus import DOMAINS  # pylint: disable=import-outside-toplevel
  unknown = sorted(set(d.mixture) - set(DOMAINS))
  if unknown or not d.mixture or any(w < 0 for w in d.mixture.values()) or \
      sum(d.mixture.values()) <= 0:
    raise ConfigError(f"data.mixture={dict(d.mixture)} must map domains of {list(DOMAINS)} "
                      "to weights >= 0 with a positive sum")
  if not 0 < t.lr < 1:
    raise ConfigError(f"train.lr={t.lr!r} must be in (0, 1)")
  if not 0 <= t.warmup_steps < t.steps:
    raise ConfigError(f"train.warmup_steps={t.warmup_steps} must be in [0, train.steps={t.steps})")
  if not t.max_wall_minutes > 0:
    raise ConfigError(f"train.max_wall_minutes={t.max_wall_minutes!r} must be > 0")
  if not 0 <= t.get("stop_step", 0) <= t.steps:
    raise ConfigError(f"train.stop_step={t.stop_step!r} must be in [0, train.steps={t.steps}] "
                      "(0 = run all steps)")
  return cfg


SERVE_POLICIES = ("fcfs", "priority", "sjf", "lpm")
SERVE_BATCHING = ("continuous", "static")
CLOCK_MODES = ("measured", "cost_model")
ARRIVAL_KINDS = ("poisson", "gamma", "constant", "ramp")
LENGTH_KINDS = ("fixed", "uniform", "lognormal", "list")
PROMPT_SOURCES = ("synthetic", "eval", "corpus")  # serving/prompt_sources.py
TRACE_FORMATS = ("jsonl", "sharegpt", "burstgpt", "azure", "mooncake")  # docs/traces.md
MAX_SHAPE_BUCKETS = 32  # each bucket is one compilation of the step


def _finite(value, field, low=0.0, strict=False):
  ok = isinstance(value, (int, float)) and math.isfinite(value) and (
      value > low if strict else value >= low)
  if not ok:
    raise ConfigError(f"{field}={value!r} must be a finite number {'>' if strict else '>='} {low}")


def _length_dist(d, field):
  _choice(d.kind, f"{field}.kind", LENGTH_KINDS)
  if d.kind == "fixed":
    _positive(d, field, "value")
  elif d.kind == "list":
    if not d["values"] or any(not isinstance(v, int) or v <= 0 for v in d["values"]):
      raise ConfigError(f"{field}.values={d['values']!r} must be a non-empty list of ints > 0")
  else:
    _positive(d, field, "low", "high")
    if d.low > d.high:
      raise ConfigError(f"{field}.low={d.low} > {field}.high={d.high}; swap them")
    if d.kind == "lognormal":
      _finite(d.median, f"{field}.median", strict=True)
      _finite(d.sigma, f"{field}.sigma")


def _check_prefix_cache(s):
  """serve.prefix_cache and what it does not combine with (yet)."""
  on = s.get("prefix_cache", False)
  if s.policy == "lpm" and not on:
    raise ConfigError("serve.policy=lpm orders requests by their cached prefix: set "
                      "serve.prefix_cache=true")
  if on and s.get("overlap", False):
    raise ConfigError("serve.prefix_cache with serve.overlap is not supported yet (a step "
                      "launched ahead would have to snapshot the cache table); drop one")
  if on and s.get("prompt_logprobs", False):
    raise ConfigError("serve.prompt_logprobs needs every prompt position computed; a cached "
                      "prefix is not (vLLM recomputes such requests too): drop one")


def validate_serve(cfg):
  """Checks the `serve`, `clock` and `workload` sections of a serving config."""
  s, m = cfg.serve, cfg.model
  _choice(s.policy, "serve.policy", SERVE_POLICIES)
  _choice(s.batching, "serve.batching", SERVE_BATCHING)
  if s.get("replay_routing", False) and m.router.kind not in ("topk", "hash"):
    raise ConfigError(f"serve.replay_routing needs model.router.kind topk or hash, not "
                      f"{m.router.kind!r}")
  _positive(s, "serve", "max_num_seqs", "max_num_batched_tokens", "kv_block_size", "kv_num_blocks")
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
  if not 0 <= s.eos_id < m.vocab_size:
    raise ConfigError(f"serve.eos_id={s.eos_id} is outside the vocabulary [0, {m.vocab_size})")
  for name in ("tensorboard", "plots", "overlap", "prefix_cache"):
    if not isinstance(s.get(name, False), bool):
      raise ConfigError(f"serve.{name}={s[name]!r} must be true or false")
  _check_prefix_cache(s)
  if not s.domains or len(set(s.domains)) != len(s.domains):
    raise ConfigError(f"serve.domains={tuple(s.domains)} must be a non-empty list of unique names")

  c = cfg.clock
  _choice(c.mode, "clock.mode", CLOCK_MODES)
  for name in ("fixed_s", "per_token_s", "per_kv_s"):
    if name in c:
      raise ConfigError(f"clock.{name} is gone: step costs now come from a clock profile "
                        "(clock.profile, docs/serving.md) or clock.coef.<feature>")
  if not isinstance(c.get("profile", ""), str):
    raise ConfigError(f"clock.profile={c.profile!r} must be 'auto', a path, or '' (clock.coef)")
  coef = c.get("coef", {})
  for name in coef:
    _finite(coef[name], f"clock.coef.{name}")
  if c.mode == "cost_model" and not c.get("profile", "") and sum(coef.values()) <= 0:
    raise ConfigError("clock.mode='cost_model' with clock.profile='' needs a positive "
                      "clock.coef (all are 0); make a profile with scripts/calibrate.py")

  w = cfg.workload
  for name in ("num_requests", "seed"):
    if not isinstance(w[name], int) or isinstance(w[name], bool) or w[name] < 0:
      raise ConfigError(f"workload.{name}={w[name]!r} must be an integer >= 0")
  if not isinstance(w.get("trace", ""), str):
    raise ConfigError(f"workload.trace={w.trace!r} must be a path (or '' for the generator)")
  _choice(w.get("prompt_source", "synthetic"), "workload.prompt_source", PROMPT_SOURCES)
  _choice(w.get("trace_format", "jsonl"), "workload.trace_format", TRACE_FORMATS)
  if w.get("trace_format", "jsonl") != "jsonl" and not w.trace:
    raise ConfigError(f"workload.trace_format={w.trace_format!r} needs workload.trace=PATH")
  for name in ("time_scale", "length_scale"):
    _finite(w.get(name, 1.0), f"workload.{name}", strict=True)
  cap = w.get("max_requests", 0)
  if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
    raise ConfigError(f"workload.max_requests={cap!r} must be an integer >= 0 (0: all)")
  if w.trace and not files.isfile(w.trace):
    raise ConfigError(f"workload.trace={w.trace!r} is not a file")
  if not isinstance(w.get("skip_bad_lines", False), bool):
    raise ConfigError(f"workload.skip_bad_lines={w.skip_bad_lines!r} must be true or false")
  _positive(w, "workload", "num_priorities")
  _choice(w.arrival.kind, "workload.arrival.kind", ARRIVAL_KINDS)
  _finite(w.arrival.rate, "workload.arrival.rate", strict=True)
  if w.arrival.kind == "gamma":
    _finite(w.arrival.burstiness, "workload.arrival.burstiness", strict=True)
  if w.arrival.kind == "ramp":
    _finite(w.arrival.rate_end, "workload.arrival.rate_end", strict=True)
  _length_dist(w.prompt_len, "workload.prompt_len")
  _length_dist(w.output_len, "workload.output_len")
  unknown = sorted(set(w.mix) - set(s.domains))
  if unknown or not w.mix or any(not v >= 0 for v in w.mix.values()) or sum(w.mix.values()) <= 0:
    raise ConfigError(f"workload.mix={dict(w.mix)} must map domains of serve.domains="
                      f"{list(s.domains)} to weights >= 0 with a positive sum")
  _finite(w.temperature, "workload.temperature")
  if not isinstance(w.top_k, int) or w.top_k < 0:
    raise ConfigError(f"workload.top_k={w.top_k!r} must be an integer >= 0 (0 is off)")
  if not 0 < w.top_p <= 1:
    raise ConfigError(f"workload.top_p={w.top_p!r} must be in (0, 1]")
  return cfg


STUDY_MODES = ("traffic", "composition", "prefix")
CO_DOMAINS = ("same", "mixed")
STUDY_ARMS = ("routing", "numerical")
STUDY_REPLAY = ("none", "solo")


def validate_study(cfg):
  """Checks a determinism-study config (configs/study_default.py): its serving sections and
  `study`. `study.capacity_factor` / `study.load`, when not None, replace the router's prefill
  and decode factors / the workload's arrival rate (one sweep axis for each)."""
  st = cfg.study
  _choice(st.mode, "study.mode", STUDY_MODES)
  s = cfg.serve
  if st.mode == "prefix" and (not s.get("prefix_cache", False) or s.prompt_logprobs):
    raise ConfigError("study.mode=prefix measures what a cached prefix carries: set "
                      "serve.prefix_cache=true and serve.prompt_logprobs=false (quality NLL is "
                      "then scored by the step, not the engine)")
  validate_serve(cfg)
  _choice(st.co_domains, "study.co_domains", CO_DOMAINS)
  _choice(st.get("arm", "routing"), "study.arm", STUDY_ARMS)
  _choice(st.get("replay", "none"), "study.replay", STUDY_REPLAY)
  _positive(st, "study", "repeats", "targets_per_domain", "max_new_tokens", "co_max_new_tokens")
  for name in ("co_requests", "quality_per_domain", "seed"):
    if not isinstance(st[name], int) or st[name] < 0:
      raise ConfigError(f"study.{name}={st[name]!r} must be an integer >= 0")
  for name in ("capacity_factor", "load"):
    if st[name] is not None:
      _finite(st[name], f"study.{name}", strict=True)
  _finite(st.inject_after_s, "study.inject_after_s")
  _finite(st.inject_window_s, "study.inject_window_s")
  unknown = sorted(set(st.target_domains) - set(cfg.serve.domains))
  if not st.target_domains or unknown:
    raise ConfigError(f"study.target_domains={tuple(st.target_domains)} must be a non-empty list "
                      f"of serve.domains={list(cfg.serve.domains)}; unknown: {unknown}")
  return cfg
