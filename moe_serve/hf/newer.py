"""The DeepSeek-V2/V3 and gpt-oss parts of an HF config -> the model section (hf/config.py does
the fields every family shares), and the `quantization_config` check. Semantics as
transformers 5's modeling_deepseek_v2/v3.py and modeling_gpt_oss.py compute them.
"""
from moe_serve.hf.positions import HFConfigError

QUANT_METHODS = ("fp8", "mxfp4")
_QUANT_KEYS = {
    "fp8": {"quant_method", "activation_scheme", "fmt", "weight_block_size", "scale_fmt",
            "modules_to_not_convert", "expert_dtype", "dequantize"},
    "mxfp4": {"quant_method", "modules_to_not_convert", "dequantize"},
}


def get(hf, key, default=None):
  """hf[key], or `default` when the key is missing or null."""
  return hf[key] if hf.get(key) is not None else default


def require(hf, key, want, family):
  """HFConfigError unless hf[key] (None when missing) is one of `want`."""
  value = hf.get(key)
  if value not in want:
    raise HFConfigError(f"HF config field {key}={value!r} is not supported for {family} "
                        f"(supported: {sorted(map(str, want))})")


def num_experts(hf):
  """The routed experts' count under the family's name for it."""
  for key in ("n_routed_experts", "num_local_experts", "num_experts"):
    if hf.get(key) is not None:
      return hf[key]
  raise HFConfigError("HF config has no number of experts (n_routed_experts, num_local_experts "
                      "or num_experts)")


def quantization(hf):
  """{method, block} of the checkpoint's quantization_config (None when unquantised):
  fp8 block-scaled weights (block = weight_block_size) or mxfp4 experts; else an error."""
  q = hf.get("quantization_config")
  if not q:
    return None
  method = q.get("quant_method")
  if method not in QUANT_METHODS:
    raise HFConfigError(f"HF config field quantization_config.quant_method={method!r} is not "
                        f"supported (supported: {list(QUANT_METHODS)}, dequantised on load)")
  unknown = sorted(set(q) - _QUANT_KEYS[method])
  if unknown:
    raise HFConfigError(f"HF config field quantization_config has keys {unknown} that "
                        f"quant_method={method!r} does not take here")
  if method == "mxfp4":
    return dict(method=method, block=None)
  checks = (("activation_scheme", ("dynamic",)), ("fmt", ("e4m3",)),
            ("scale_fmt", ("float", "ue8m0")), ("expert_dtype", ("fp8",)))
  for key, want in checks:
    if key in q and q[key] not in want:
      raise HFConfigError(f"HF config field quantization_config.{key}={q[key]!r} is not "
                          f"supported (supported: {list(want)})")
  block = q.get("weight_block_size") or [128, 128]
  if (len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block)):
    raise HFConfigError(f"HF config field quantization_config.weight_block_size={block!r} must "
                        "be two positive integers")
  return dict(method=method, block=tuple(block))


def _equal_or_absent(hf, key, want, why):
  if hf.get(key) is not None and hf[key] != want:
    raise HFConfigError(f"HF config field {key}={hf[key]!r} must be {want!r} ({why})")


def deepseek(hf, family, m):
  """DeepSeek-V2/V3 (and Kimi K2): latent attention, dense first layers, shared experts and
  the family's router, into the model section `m` (changed in place)."""
  heads, nope, rope = hf["num_attention_heads"], hf["qk_nope_head_dim"], hf["qk_rope_head_dim"]
  _equal_or_absent(hf, "num_key_value_heads", heads, "latent attention expands the latent to "
                   "every query head; transformers' MLA needs num_key_value_heads = heads")
  _equal_or_absent(hf, "head_dim", rope, "transformers sets it to qk_rope_head_dim")
  _equal_or_absent(hf, "qk_head_dim", nope + rope, "qk_nope_head_dim + qk_rope_head_dim")
  _equal_or_absent(hf, "moe_layer_freq", 1, "transformers makes every layer from "
                   "first_k_dense_replace on an MoE layer; DeepSeek's own code skips some when "
                   "it is > 1")
  m.update(attention="mla", q_lora_rank=int(get(hf, "q_lora_rank", 0)),
           kv_lora_rank=hf["kv_lora_rank"], qk_nope_head_dim=nope, qk_rope_head_dim=rope,
           v_head_dim=hf["v_head_dim"], head_dim=nope + rope, num_kv_heads=heads,
           first_dense=int(get(hf, "first_k_dense_replace", 0)), moe_every=1)
  shared = get(hf, "n_shared_experts", 0) * hf["moe_intermediate_size"]
  m.update(shared_expert=shared > 0, d_ff_shared=shared)
  r = m.router
  r.scale = float(get(hf, "routed_scaling_factor", 1.0))
  if family == "deepseek_v3":  # transformers ignores topk_method and scoring_func: these are V3's
    require(hf, "topk_method", (None, "noaux_tc"), family)
    require(hf, "scoring_func", (None, "sigmoid"), family)
    if hf.get("rope_interleave") is False:
      raise HFConfigError("HF config field rope_interleave=False is not supported: the importer "
                          "de-interleaves DeepSeek's rotary weight columns (rope_interleave true)")
    r.update(score="sigmoid", selection_bias=True, expert_groups=int(get(hf, "n_group", 1)),
             topk_groups=int(get(hf, "topk_group", 1)), group_score="top2_sum",
             renormalize=bool(get(hf, "norm_topk_prob", False)))
    return
  require(hf, "topk_method", ("greedy", "group_limited_greedy"), family)
  require(hf, "scoring_func", (None, "softmax"), family)
  require(hf, "mlp_bias", (None, False), family)
  if hf.get("norm_topk_prob"):
    raise HFConfigError("HF config field norm_topk_prob=True is not supported for deepseek_v2: "
                        "transformers' DeepSeek-V2 router ignores it while DeepSeek's own code "
                        "renormalises; moe_serve refuses to guess")
  r.update(score="softmax", renormalize=False)
  if hf["topk_method"] == "group_limited_greedy":
    r.update(expert_groups=int(hf["n_group"]), topk_groups=int(hf["topk_group"]),
             group_score="max")


def gpt_oss(hf, m):
  """gpt-oss: sinks, q/k/v/o biases, the router's bias and softmax over its top k (= softmax
  then renormalised top k), clamped SwiGLU experts with biases, into `m` (changed in place)."""
  k = hf["num_experts_per_tok"]
  _equal_or_absent(hf, "experts_per_token", k, "the older name of num_experts_per_tok")
  bias = bool(get(hf, "attention_bias", True))
  m.update(attn_bias=bias, attn_out_bias=bias, attn_sinks=True, expert_act="clamped",
           swiglu_limit=float(get(hf, "swiglu_limit", 7.0)),
           swiglu_alpha=float(get(hf, "swiglu_alpha", 1.702)), expert_bias=True,
           d_ff_expert=hf["intermediate_size"])
  m.router.update(score="softmax", bias=True, renormalize=True)
