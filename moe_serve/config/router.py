"""The `model.router` section: option lists, late options' defaults, their checks."""
import math

from moe_serve.config.checks import ConfigError, boolean, choice, positive, require_options

ROUTER_KINDS = ("topk", "expert_choice", "soft", "hash")
CAPACITY_SCOPES = ("batch", "group", "sequence", "none")
PRIORITIES = ("position", "token", "score")
DISPATCH_BACKENDS = ("einsum", "gather", "ragged", "sorted")
ROUTER_SCORES = ("softmax", "sigmoid")
GROUP_SCORES = ("top2_sum", "max")

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
  require_options(r, "model.router", ROUTER_OPTION_DEFAULTS)
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
