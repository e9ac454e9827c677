"""The `model` section: option lists, late options' defaults, their checks (router: router.py)."""
from moe_serve.config.architecture import ARCH_OPTION_DEFAULTS, validate_architecture
from moe_serve.config.checks import (ConfigError, boolean, choice, divisors, positive,
                                     require_options)
from moe_serve.config.router import ROUTER_OPTION_DEFAULTS, validate_router

DTYPES = ("float32", "bfloat16", "float16")
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
    **ARCH_OPTION_DEFAULTS,  # architecture.py: MLA, sinks, windows, rope scaling, expert act
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
  require_options(m, "model", MODEL_OPTION_DEFAULTS)
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


