"""A Hugging Face `config.json` -> a validated moe_serve model section, or a clear error.

Families (hf/families.py): mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3 (and
kimi_k2, its architecture), gpt_oss. Every field of the file is either honoured (mapped below;
rope scaling and sliding windows in hf/positions.py; DeepSeek and gpt-oss in hf/newer.py),
checked to hold the one value we implement (e.g. `hidden_act` silu), or on the list of fields
that cannot change the inference output (training-only or bookkeeping, families.INERT).
Anything else is an error naming the field, so a new option in a checkpoint is never silently
ignored. docs/hf.md has the table.
"""
import ml_collections

from moe_serve import config as config_lib
from moe_serve.hf import families as families_lib
from moe_serve.hf import newer
from moe_serve.hf import positions

FAMILIES = families_lib.FAMILIES
HFConfigError = positions.HFConfigError
_get = newer.get
_require = newer.require


def family_of(hf):
  """The family whose architecture an HF config describes (an alias resolved), or an error."""
  name = hf.get("model_type")
  family = families_lib.ALIASES.get(name, name)
  if family not in FAMILIES:
    raise HFConfigError(f"HF model_type={name!r} is not supported; supported families: "
                        f"{list(FAMILIES)} (and {sorted(families_lib.ALIASES)})")
  return family


DEFAULT_MAX_LEN = 2048  # KV cache rows are [max_len]: serve long contexts by asking for them


def model_config(hf, max_len=None):
  """The moe_serve `model` section for an HF config dict (router: dropless, the family's top-k
  normalisation); `max_len` caps the context (default: min(max_position_embeddings, 2048))."""
  family = family_of(hf)
  known = families_lib.INERT | families_lib.COMMON | families_lib.FAMILY_FIELDS[family]
  unknown = sorted(set(hf) - known)
  if unknown:
    raise HFConfigError(f"HF config fields {unknown} are not known for {family}: moe_serve "
                        "cannot tell whether they change the model, so it refuses to guess "
                        "(docs/hf.md lists the fields it honours)")
  _require(hf, "hidden_act", ("silu",), family)
  if _get(hf, "attention_dropout", 0.0) != 0.0:
    raise HFConfigError(f"HF config field attention_dropout={hf['attention_dropout']} must be 0")
  newer.quantization(hf)
  d, heads = hf["hidden_size"], hf["num_attention_heads"]
  max_pos = hf["max_position_embeddings"]
  max_len = int(max_len or min(max_pos, DEFAULT_MAX_LEN))
  if max_len > max_pos:
    raise HFConfigError(f"max_len={max_len} exceeds the model's max_position_embeddings="
                        f"{max_pos}")
  m = ml_collections.ConfigDict(dict(
      vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=_get(hf, "num_key_value_heads", heads),
      head_dim=_get(hf, "head_dim", d // heads), d_ff=hf["intermediate_size"],
      num_experts=newer.num_experts(hf), d_ff_expert=_get(hf, "moe_intermediate_size",
                                                          hf["intermediate_size"]),
      moe_every=_get(hf, "decoder_sparse_step", 1), shared_expert=False,
      tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)), max_len=max_len,
      norm_eps=float(hf["rms_norm_eps"]), dtype="float32",
  ))
  m.update(config_lib.MODEL_OPTION_DEFAULTS)
  m.update(positions.rope_options(hf))
  m.update(positions.window_options(hf, family))
  m.tied_logit_scale = False  # HF ties the unembedding without scaling
  renormalize = {"mixtral": True}.get(family, bool(_get(hf, "norm_topk_prob", False)))
  m.router = ml_collections.ConfigDict(dict(
      kind="topk", k=hf["num_experts_per_tok"], renormalize=renormalize, capacity_scope="none",
      capacity_factor_prefill=1.25, capacity_factor_decode=1.25, group_size=64, min_capacity=1,
      priority="token", dispatch="gather", jitter=0.0, lb_loss_weight=0.0, z_loss_weight=0.0))
  m.router.update(config_lib.ROUTER_OPTION_DEFAULTS)
  if family in families_lib.MLA_FAMILIES:
    newer.deepseek(hf, family, m)
  elif family == "gpt_oss":
    newer.gpt_oss(hf, m)
  elif family == "qwen2_moe":
    m.attn_bias = bool(_get(hf, "qkv_bias", True))  # always on before transformers 5
    shared = _get(hf, "shared_expert_intermediate_size", 0)
    m.update(shared_expert=shared > 0, d_ff_shared=shared, shared_expert_gate=shared > 0)
  if family not in ("qwen2_moe", "gpt_oss"):
    _require(hf, "attention_bias", (None, False), family)
  if family in ("qwen2_moe", "qwen3_moe") and _get(hf, "mlp_only_layers", []):
    raise HFConfigError(f"HF config field mlp_only_layers={hf['mlp_only_layers']} is not "
                        "supported (dense layers come only from decoder_sparse_step)")
  if family == "qwen3_moe":
    m.qk_norm = "head"
  if family == "olmoe":
    m.qk_norm = "full"
    _require(hf, "clip_qkv", (None,), family)
  try:
    config_lib.validate_model(m)
  except config_lib.ConfigError as e:
    raise HFConfigError(f"HF config maps to an invalid model section: {e}") from None
  return m
