"""HF rotary scaling and sliding windows -> the model section's rope_* and window options, with
transformers' own defaults (modeling_rope_utils, each family's configuration file); anything else
is refused by name.

Rope: `rope_scaling` (older configs) replaces `rope_parameters` when set, as transformers does;
its type comes from `rope_type` or the older `type`; `rope_theta` from inside it or the top level.
Windows: a query at position p attends keys p - window + 1 .. p (transformers'
`kv_idx > q_idx - sliding_window`), on every layer or on the layers `layer_types` marks.
"""
from moe_serve import config as config_lib


class HFConfigError(config_lib.ConfigError):
  """An HF config.json that moe_serve cannot honour; the message names the field."""


# Keys each rope type may carry (beyond rope_type / type / rope_theta), as transformers reads them.
_ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "attention_factor", "truncate"},
}


def rope_options(hf):
  """{rope_theta, rope_type, rope_factor, ...} of the model section for an HF config dict."""
  params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
  kind = params.pop("rope_type", params.pop("type", "default"))
  params.pop("type", None)
  where = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
  if kind not in _ROPE_KEYS:
    raise HFConfigError(f"HF config field {where}.rope_type={kind!r} is not supported "
                        f"(supported: {sorted(_ROPE_KEYS)})")
  theta = params.pop("rope_theta", hf.get("rope_theta"))
  if theta is None:
    raise HFConfigError("HF config has no rope_theta (top level or in rope_parameters)")
  if params.pop("partial_rotary_factor", 1.0) != 1.0:
    raise HFConfigError(f"HF config field {where}.partial_rotary_factor="
                        f"{hf[where]['partial_rotary_factor']!r} is not supported (only 1.0: "
                        "every head dimension rotates)")
  unknown = sorted(set(params) - _ROPE_KEYS[kind])
  if unknown:
    raise HFConfigError(f"HF config field {where} has keys {unknown} that rope_type={kind!r} "
                        f"does not take (known: {sorted(_ROPE_KEYS[kind])})")
  out = dict(rope_theta=float(theta), rope_type=kind)
  if kind == "default":
    return out
  max_pos = hf["max_position_embeddings"]
  original = params.get("original_max_position_embeddings",
                        hf.get("original_max_position_embeddings", max_pos))
  factor = params.get("factor")
  if factor is None and kind == "yarn":  # transformers: the context extension ratio
    factor = max_pos / original
  if factor is None:
    raise HFConfigError(f"HF config field {where} of rope_type={kind!r} has no factor")
  out.update(rope_factor=float(factor))
  if kind == "llama3":
    for key in ("low_freq_factor", "high_freq_factor"):
      if key not in params:
        raise HFConfigError(f"HF config field {where} of rope_type='llama3' has no {key}")
    out.update(rope_original_max_len=int(original),
               rope_low_freq_factor=float(params["low_freq_factor"]),
               rope_high_freq_factor=float(params["high_freq_factor"]))
  elif kind == "yarn":
    out.update(rope_original_max_len=int(original),
               rope_beta_fast=float(params.get("beta_fast") or 32.0),  # transformers: `or`
               rope_beta_slow=float(params.get("beta_slow") or 1.0),
               rope_mscale=float(params.get("mscale") or 0.0),
               rope_mscale_all_dim=float(params.get("mscale_all_dim") or 0.0),
               rope_attention_factor=float(params.get("attention_factor") or 0.0),
               rope_truncate=bool(params.get("truncate", True)))
  return out


_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def _layer_types(hf, types):
  num_layers = hf["num_hidden_layers"]
  if len(types) != num_layers:
    raise HFConfigError(f"HF config field layer_types has {len(types)} entries for "
                        f"num_hidden_layers={num_layers}")
  unknown = sorted(set(types) - set(_LAYER_TYPES))
  if unknown:
    raise HFConfigError(f"HF config field layer_types has unsupported entries {unknown} "
                        f"(supported: {sorted(_LAYER_TYPES)})")
  return tuple(_LAYER_TYPES[t] for t in types)


def window_options(hf, family):
  """{sliding_window, layer_types} of the model section, as the family's transformers code
  decides which layers slide (layer_types () = every layer, when sliding_window > 0)."""
  window = hf.get("sliding_window") or 0
  if family == "mixtral":  # one window for every layer, or none
    return dict(sliding_window=int(window), layer_types=())
  if family == "qwen3_moe":  # transformers 5: every layer when use_sliding_window
    if not hf.get("use_sliding_window"):
      return dict(sliding_window=0, layer_types=())
    below = hf.get("max_window_layers")
    if below is not None and below < hf["num_hidden_layers"]:
      raise HFConfigError(f"HF config field max_window_layers={below} with use_sliding_window: "
                          "transformers' Qwen3-MoE slides every layer, Qwen's original code only "
                          "some; moe_serve refuses to guess")
    return dict(sliding_window=int(window), layer_types=())
  if family == "qwen2_moe":
    on = bool(hf.get("use_sliding_window"))
    types = hf.get("layer_types")
    if types is None:  # transformers' default: even layers below max_window_layers
      below = hf.get("max_window_layers", 28)
      types = ["sliding_attention" if (i + 1) % 2 and i < below and on else "full_attention"
               for i in range(hf["num_hidden_layers"])]
    types = _layer_types(hf, types)
    if "sliding" in types and not (on and window):
      raise HFConfigError(f"HF config field layer_types has sliding layers but "
                          f"use_sliding_window={hf.get('use_sliding_window')!r}, sliding_window="
                          f"{hf.get('sliding_window')!r}")
    if "sliding" not in types:
      return dict(sliding_window=0, layer_types=())
    return dict(sliding_window=int(window), layer_types=types)
  if family == "gpt_oss":
    types = hf.get("layer_types")
    if types is None:  # transformers' default: sliding, full, sliding, ...
      types = ["sliding_attention" if (i + 1) % 2 else "full_attention"
               for i in range(hf["num_hidden_layers"])]
    types = _layer_types(hf, types)
    if "sliding" in types and not window:
      raise HFConfigError("HF config field layer_types has sliding layers but sliding_window="
                          f"{hf.get('sliding_window')!r}")
    return dict(sliding_window=int(window) if "sliding" in types else 0,
                layer_types=types if "sliding" in types and "full" in types else ())
  return dict(sliding_window=0, layer_types=())  # olmoe, DeepSeek: no windows
