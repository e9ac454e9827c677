"""A Hugging Face `config.json` -> a validated moe_serve model section, or a clear error.

Families: mixtral, qwen2_moe, qwen3_moe, olmoe. Every field of the file is either honoured
(mapped below), checked to hold the one value we implement (e.g. `hidden_act` silu, no
`rope_scaling`), or on the list of fields that cannot change the inference output (training-only
or bookkeeping, `_INERT`). Anything else is an error naming the field, so a new option in a
checkpoint is never silently ignored. docs/hf.md has the table.
"""
import ml_collections

from moe_serve import config as config_lib

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


class HFConfigError(config_lib.ConfigError):
  """An HF config.json that moe_serve cannot honour; the message names the field."""


# Fields that do not change greedy inference: training (losses, init, dropout at 0), cache
# bookkeeping, labels, token ids (the tokenizer's business), dtype (the weights' files say it).
_INERT = {
    "architectures", "transformers_version", "_name_or_path", "model_type", "dtype",
    "torch_dtype", "initializer_range", "use_cache", "output_router_logits", "router_aux_loss_coef",
    "router_z_loss_coef", "router_jitter_noise", "output_hidden_states", "output_attentions",
    "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "pad_token_id", "bos_token_id", "eos_token_id", "tokenizer_class",
    "max_window_layers", "layer_types", "tie_encoder_decoder", "torchscript", "use_bfloat16",
    "pruned_heads", "add_cross_attention", "cross_attention_hidden_size", "finetuning_task",
    "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params", "bad_words_ids",
    "begin_suppress_tokens", "tf_legacy_loss", "quantization_config_ignored",
}
# Fields every family maps the same way.
_COMMON = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
           "rope_theta", "rope_parameters", "rope_scaling", "tie_word_embeddings", "hidden_act",
           "attention_dropout", "sliding_window", "use_sliding_window", "num_experts_per_tok",
           "attention_bias"}
_FAMILY_FIELDS = {
    "mixtral": {"intermediate_size", "num_local_experts"},
    "qwen2_moe": {"intermediate_size", "num_experts", "moe_intermediate_size",
                  "shared_expert_intermediate_size", "norm_topk_prob", "decoder_sparse_step",
                  "mlp_only_layers", "qkv_bias"},
    "qwen3_moe": {"intermediate_size", "num_experts", "num_local_experts",
                  "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step",
                  "mlp_only_layers"},
    "olmoe": {"intermediate_size", "num_experts", "norm_topk_prob", "clip_qkv"},
}
DEFAULT_MAX_LEN = 2048  # KV cache rows are [max_len]: serve long contexts by asking for them


def _get(hf, key, default=None):
  return hf[key] if hf.get(key) is not None else default


def _require(hf, key, want, family):
  value = hf.get(key)
  if value not in want:
    raise HFConfigError(f"HF config field {key}={value!r} is not supported for {family} "
                        f"(supported: {sorted(map(str, want))})")


def _rope_theta(hf):
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling")
  kind = params.get("rope_type", "default")
  if scaling or kind != "default":
    raise HFConfigError(f"HF config field rope_scaling={scaling!r} / rope_parameters.rope_type="
                        f"{kind!r}: only plain rotary embeddings (rope_type 'default') are "
                        "supported")
  unknown = sorted(set(params) - {"rope_theta", "rope_type"})
  if unknown:
    raise HFConfigError(f"HF config field rope_parameters has unsupported keys {unknown}")
  theta = params.get("rope_theta", hf.get("rope_theta"))
  if theta is None:
    raise HFConfigError("HF config has no rope_theta (top level or in rope_parameters)")
  return float(theta)


def model_config(hf, max_len=None):
  """The moe_serve `model` section for an HF config dict (router: dropless, the family's top-k
  normalisation); `max_len` caps the context (default: min(max_position_embeddings, 2048))."""
  family = hf.get("model_type")
  if family not in FAMILIES:
    raise HFConfigError(f"HF model_type={family!r} is not supported; supported families: "
                        f"{list(FAMILIES)}")
  unknown = sorted(set(hf) - _INERT - _COMMON - _FAMILY_FIELDS[family])
  if unknown:
    raise HFConfigError(f"HF config fields {unknown} are not known for {family}: moe_serve "
                        "cannot tell whether they change the model, so it refuses to guess "
                        "(docs/hf.md lists the fields it honours)")
  _require(hf, "hidden_act", ("silu",), family)
  if _get(hf, "attention_dropout", 0.0) != 0.0:
    raise HFConfigError(f"HF config field attention_dropout={hf['attention_dropout']} must be 0")
  d, heads = hf["hidden_size"], hf["num_attention_heads"]
  max_pos = hf["max_position_embeddings"]
  max_len = int(max_len or min(max_pos, DEFAULT_MAX_LEN))
  if max_len > max_pos:
    raise HFConfigError(f"max_len={max_len} exceeds the model's max_position_embeddings="
                        f"{max_pos}")
  window = hf.get("sliding_window")
  if hf.get("use_sliding_window", window not in (None, 0)) and window and window < max_len:
    raise HFConfigError(f"HF config field sliding_window={window} is shorter than max_len="
                        f"{max_len}; sliding-window attention is not implemented: serve with "
                        f"max_len <= {window}")
  num_experts = _get(hf, "num_local_experts", _get(hf, "num_experts"))
  m = ml_collections.ConfigDict(dict(
      vocab_size=hf["vocab_size"], d_model=d, num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=_get(hf, "num_key_value_heads", heads),
      head_dim=_get(hf, "head_dim", d // heads), d_ff=hf["intermediate_size"],
      num_experts=num_experts, d_ff_expert=_get(hf, "moe_intermediate_size",
                                                hf["intermediate_size"]),
      moe_every=_get(hf, "decoder_sparse_step", 1), shared_expert=False,
      tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)), max_len=max_len,
      rope_theta=_rope_theta(hf), norm_eps=float(hf["rms_norm_eps"]), dtype="float32",
  ))
  m.update(config_lib.MODEL_OPTION_DEFAULTS)
  m.tied_logit_scale = False  # HF ties the unembedding without scaling
  renormalize = {"mixtral": True}.get(family, bool(_get(hf, "norm_topk_prob", False)))
  m.router = ml_collections.ConfigDict(dict(
      kind="topk", k=hf["num_experts_per_tok"], renormalize=renormalize, capacity_scope="none",
      capacity_factor_prefill=1.25, capacity_factor_decode=1.25, group_size=64, min_capacity=1,
      priority="token", dispatch="gather", jitter=0.0, lb_loss_weight=0.0, z_loss_weight=0.0))
  m.router.update(config_lib.ROUTER_OPTION_DEFAULTS)
  if family == "qwen2_moe":
    m.attn_bias = bool(_get(hf, "qkv_bias", True))  # always on before transformers 5
    shared = _get(hf, "shared_expert_intermediate_size", 0)
    m.update(shared_expert=shared > 0, d_ff_shared=shared, shared_expert_gate=shared > 0)
  else:
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
