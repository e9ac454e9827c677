"""The `model` section and its `router`: option lists, late options' defaults, their checks."""
import math

from moe_serve.config.architecture import ARCH_OPTION_DEFAULTS, validate_architecture
from moe_serve.config.checks import ConfigError, boolean, choice, divisors, positive

ROUTER_KINDS = ("topk", "expert_choice", "soft", "hash")
CAPACITY_SCOPES = ("batch", "group", "sequence", "none")
PRIORITIES = ("position", "token", "score")
DISPATCH_BACKENDS = ("einsum", "gather", "ragged", "sorted")
DTYPES = ("float32", "bfloat16", "float16")
QK_NORMS = ("none", "head", "full")
ROUTER_SCORES = ("softmax", "sigmoid")
GROUP_SCORES = ("top2_sum", "max")

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
    **ARCH_OPTION_DEFAULTS,  # architecture.py: MLA, sinks, windows, rope scaling, expert act
)
# Router options added after the bundled model was exported (DeepSeek, gpt-oss routers); the
# defaults are the softmax top-k router every earlier model has.
ROUTER_OPTION_DEFAULTS = dict(
    score="softmax",  # softmax over experts | sigmoid per expert (DeepSeek-V3), in float32
    bias=False,  # a learned bias on the router logits (gpt-oss)
    selection_bias=False,  # a learned per-expert bias added to the scores to CHOOSE only (V3)
    expert_groups=1,  # experts in this many equal groups (HF n_group); 1 = no group limit
    topk_groups=1,  # choose only within the best topk_groups groups (HF topk_group)
    group_score="top2_sum",  # a group's score: top2_sum of its scores (V3) | max (V2)
    scale=1.0,  # routed weights times this (HF routed_scaling_factor)
)


def with_model_defaults(model_cfg):
  """`model_cfg` with every option of MODEL_OPTION_DEFAULTS present (missing ones default)."""
  with model_cfg.unlocked():
    for key, value in MODEL_OPTION_DEFAULTS.items():
      if key not in model_cfg:
        model_cfg[key] = value
    if "router" in model_cfg:
      with model_cfg.router.unlocked():
        for key, value in ROUTER_OPTION_DEFAULTS.items():
          if key not in model_cfg.router:
            model_cfg.router[key] = value
  return model_cfg


def validate_model(m):
  """Checks a `config.model` ConfigDict; raises ConfigError on the first bad field."""
  positive(m, "model", "vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
           "head_dim", "d_ff", "num_experts", "d_ff_expert", "moe_every", "max_len")
  if m.num_heads % m.num_kv_heads:
    raise ConfigError(
        f"model.num_heads={m.num_heads} must be divisible by model.num_kv_heads={m.num_kv_heads}; "
        f"valid num_kv_heads: {divisors(m.num_heads)}")
  if m.head_dim % 2:
    raise ConfigError(f"model.head_dim={m.head_dim} must be even for rotary embeddings")
  if m.moe_every > m.num_layers:
    raise ConfigError(
        f"model.moe_every={m.moe_every} is out of range: use 1..model.num_layers={m.num_layers} "
        "(layer i is MoE when (i + 1) % moe_every == 0)")
  choice(m.dtype, "model.dtype", DTYPES)
  for key in MODEL_OPTION_DEFAULTS:
    if key not in m:
      raise ConfigError(f"model.{key} is missing; start from configs/base.py (default "
                        f"{MODEL_OPTION_DEFAULTS[key]!r})")
  choice(m.param_dtype, "model.param_dtype", DTYPES)
  choice(m.qk_norm, "model.qk_norm", QK_NORMS)
  for key in ("attn_bias", "tied_logit_scale", "shared_expert_gate", "batch_invariant"):
    boolean(m[key], f"model.{key}")
  if not isinstance(m.d_ff_shared, int) or m.d_ff_shared < 0:
    raise ConfigError(f"model.d_ff_shared={m.d_ff_shared!r} must be an integer >= 0 "
                      "(0: model.d_ff_expert)")
  if m.shared_expert_gate and not m.shared_expert:
    raise ConfigError("model.shared_expert_gate=True needs model.shared_expert=True")
  if not (isinstance(m.norm_eps, (int, float)) and 0 < m.norm_eps < 1):
    raise ConfigError(f"model.norm_eps={m.norm_eps!r} must be in (0, 1)")
  if not m.rope_theta > 0:
    raise ConfigError(f"model.rope_theta={m.rope_theta} must be > 0")
  validate_architecture(m)
  validate_router(m.router, m.num_experts)


def validate_router(r, num_experts):
  """Checks `config.model.router` against the number of experts."""
  choice(r.kind, "model.router.kind", ROUTER_KINDS)
  choice(r.capacity_scope, "model.router.capacity_scope", CAPACITY_SCOPES)
  choice(r.priority, "model.router.priority", PRIORITIES)
  choice(r.dispatch, "model.router.dispatch", DISPATCH_BACKENDS)
  positive(r, "model.router", "k", "group_size")
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
  for key in ROUTER_OPTION_DEFAULTS:
    if key not in r:
      raise ConfigError(f"model.router.{key} is missing; start from configs/base.py (default "
                        f"{ROUTER_OPTION_DEFAULTS[key]!r})")
  choice(r.score, "model.router.score", ROUTER_SCORES)
  choice(r.group_score, "model.router.group_score", GROUP_SCORES)
  for key in ("bias", "selection_bias"):
    boolean(r[key], f"model.router.{key}")
  positive(r, "model.router", "expert_groups", "topk_groups")
  if num_experts % r.expert_groups or r.topk_groups > r.expert_groups:
    raise ConfigError(f"model.router.expert_groups={r.expert_groups} must divide "
                      f"model.num_experts={num_experts} and be >= model.router.topk_groups="
                      f"{r.topk_groups}")
  if (r.group_score == "top2_sum" and r.topk_groups < r.expert_groups
      and num_experts // r.expert_groups < 2):
    raise ConfigError(f"model.router.group_score='top2_sum' sums a group's two best scores and "
                      f"needs >= 2 experts per group, got {num_experts // r.expert_groups}; use "
                      f"group_score='max' or fewer expert_groups")
  if r.k > r.topk_groups * (num_experts // r.expert_groups):
    raise ConfigError(f"model.router.k={r.k} exceeds the experts of topk_groups={r.topk_groups} "
                      f"groups of {num_experts // r.expert_groups}")
  if not (isinstance(r.scale, (int, float)) and r.scale > 0):
    raise ConfigError(f"model.router.scale={r.scale!r} must be a number > 0")
  if r.kind != "topk" and (r.score != "softmax" or r.expert_groups > 1 or r.selection_bias):
    raise ConfigError(f"model.router.kind={r.kind!r} uses the softmax router without groups or "
                      "selection bias; score, expert_groups and selection_bias need kind='topk'")
  if r.kind == "soft" and (r.bias or r.scale != 1.0):
    raise ConfigError("model.router.kind='soft' has its own router (phi, scale): router.bias and "
                      f"router.scale={r.scale!r} apply to the top-k, hash and expert-choice "
                      "routers only; use bias=False, scale=1.0")
  validate_routing_rules(r)
  if r.dispatch == "ragged" and r.capacity_scope != "none":
    raise ConfigError(
        f"model.router.dispatch='ragged' is dropless and needs capacity_scope='none', "
        f"got capacity_scope={r.capacity_scope!r}; use dispatch='einsum' or 'gather' to drop")


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
