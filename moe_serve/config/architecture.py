"""Architecture options of the newer MoE families (DeepSeek-V2/V3, gpt-oss) and of long-context
checkpoints: latent attention, attention sinks and out-projection bias, sliding windows, rope
scaling, the experts' activation and biases, dense first layers. Every default keeps the original
architecture, so older model sections gain them unchanged (`model.with_model_defaults`).
"""
from moe_serve.config.checks import ConfigError, boolean, choice

ATTENTION_KINDS = ("gqa", "mla")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
LAYER_TYPES = ("full", "sliding")
EXPERT_ACTS = ("silu", "clamped")

ARCH_OPTION_DEFAULTS = dict(
    first_dense=0,  # layers i < first_dense have a dense FFN (DeepSeek first_k_dense_replace)
    attention="gqa",  # gqa (grouped-query) | mla (DeepSeek multi-head latent attention)
    # MLA sizes (attention="mla"): q_lora_rank 0 = a plain query projection; the cache holds the
    # kv_lora_rank latent and the qk_rope_head_dim rotary key per token (no per-head keys/values).
    q_lora_rank=0,
    kv_lora_rank=0,
    qk_nope_head_dim=0,
    qk_rope_head_dim=0,
    v_head_dim=0,
    attn_out_bias=False,  # bias on the output projection (gpt-oss)
    attn_sinks=False,  # a learned logit per query head in every softmax, then dropped (gpt-oss)
    sliding_window=0,  # 0: none; else a query at p attends keys p - sliding_window + 1 .. p
    layer_types=(),  # per layer "full" | "sliding"; () = every layer sliding when sliding_window
    # Rotary scaling (HF rope_scaling / rope_parameters): default | linear | llama3 | yarn.
    rope_type="default",
    rope_factor=1.0,
    rope_original_max_len=0,  # llama3, yarn: original_max_position_embeddings
    rope_low_freq_factor=1.0,  # llama3
    rope_high_freq_factor=4.0,  # llama3
    rope_beta_fast=32.0,  # yarn
    rope_beta_slow=1.0,  # yarn
    rope_mscale=0.0,  # yarn (DeepSeek): 0 = not given
    rope_mscale_all_dim=0.0,  # yarn (DeepSeek): 0 = not given; MLA softmax x mscale^2 (as HF)
    rope_attention_factor=0.0,  # yarn: 0 = derived from factor / mscale (as HF does)
    rope_truncate=True,  # yarn: round the correction range to whole dims (gpt-oss: False)
    expert_act="silu",  # silu: silu(g) * u | clamped: gpt-oss's clamped SwiGLU (limit, alpha)
    swiglu_limit=7.0,  # clamped: gate <= limit, -limit <= up <= limit
    swiglu_alpha=1.702,  # clamped: g * sigmoid(alpha * g) * (u + 1)
    expert_bias=False,  # biases on the experts' gate, up and down projections (gpt-oss)
)


def _nonneg_int(m, key):
  if not isinstance(m[key], int) or isinstance(m[key], bool) or m[key] < 0:
    raise ConfigError(f"model.{key}={m[key]!r} must be an integer >= 0")


def validate_architecture(m):
  """Checks the ARCH_OPTION_DEFAULTS fields of a model section (all present: validate_model)."""
  choice(m.attention, "model.attention", ATTENTION_KINDS)
  for key in ("first_dense", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
              "qk_rope_head_dim", "v_head_dim", "sliding_window", "rope_original_max_len"):
    _nonneg_int(m, key)
  if m.first_dense > m.num_layers:
    raise ConfigError(f"model.first_dense={m.first_dense} exceeds model.num_layers="
                      f"{m.num_layers}")
  if m.attention == "mla":
    for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
      if m[key] <= 0:
        raise ConfigError(f"model.attention='mla' needs model.{key} > 0, got {m[key]}")
    if m.qk_rope_head_dim % 2:
      raise ConfigError(f"model.qk_rope_head_dim={m.qk_rope_head_dim} must be even for rotary "
                        "embeddings")
    if m.get("attn_bias", False) or m.get("qk_norm", "none") != "none":
      raise ConfigError(f"model.attention='mla' has no q/k/v projections for model.attn_bias="
                        f"{m.get('attn_bias')!r} or model.qk_norm={m.get('qk_norm')!r}; set "
                        "attn_bias=False and qk_norm='none'")
  for key in ("attn_out_bias", "attn_sinks", "rope_truncate", "expert_bias"):
    boolean(m[key], f"model.{key}")
  types = tuple(m.layer_types)
  if types:
    if len(types) != m.num_layers:
      raise ConfigError(f"model.layer_types has {len(types)} entries, model.num_layers="
                        f"{m.num_layers}; give one of {list(LAYER_TYPES)} per layer, or ()")
    for t in types:
      choice(t, "model.layer_types entry", LAYER_TYPES)
    if "sliding" in types and not m.sliding_window:
      raise ConfigError("model.layer_types has sliding layers but model.sliding_window=0")
  choice(m.rope_type, "model.rope_type", ROPE_TYPES)
  if m.rope_type != "default" and not m.rope_factor > 0:
    raise ConfigError(f"model.rope_factor={m.rope_factor!r} must be > 0")
  if m.rope_type in ("llama3", "yarn") and m.rope_original_max_len <= 0:
    raise ConfigError(f"model.rope_type={m.rope_type!r} needs model.rope_original_max_len > 0")
  choice(m.expert_act, "model.expert_act", EXPERT_ACTS)
  if m.expert_act == "clamped" and not (m.swiglu_limit > 0 and m.swiglu_alpha > 0):
    raise ConfigError(f"model.expert_act='clamped' needs swiglu_limit > 0 and swiglu_alpha > 0, "
                      f"got {m.swiglu_limit!r} and {m.swiglu_alpha!r}")


def is_sliding_layer(m, i):
  """Whether layer `i` (from 0) attends within model.sliding_window positions."""
  if not m.get("sliding_window", 0):
    return False
  types = tuple(m.get("layer_types", ()))
  return not types or types[i] == "sliding"
