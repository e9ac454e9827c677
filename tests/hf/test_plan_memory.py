"""What scripts/plan_memory.py computes (the config resolved from params_dir, then
memory.planned), from a full-size config.json alone (no weights): DeepSeek-V3's 671B
parameters in bf16 (its FP8 weights are dequantised to bf16) and its latent KV cache (R + Hr per
token and layer, not per-head keys and values); gpt-oss-20b's parameters in bf16 (MXFP4 experts
dequantised).
"""
import json
import os

from configs import serve_default
from moe_serve import hf, loading
from moe_serve.parallel import memory
from tests.helpers.hf_fixtures import FIXTURES
V3 = {  # deepseek-ai/DeepSeek-V3 config.json (auto_map left out)
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False,
    "attention_dropout": 0.0, "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1,
    "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
    "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
    "max_position_embeddings": 163840, "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
    "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 1536,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06, "rope_scaling": {
        "beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid",
    "seq_aux": True, "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16", "transformers_version": "4.33.1", "use_cache": True,
    "v_head_dim": 128, "vocab_size": 129280}
GPT_OSS_20B = {  # openai/gpt-oss-20b config.json
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
    "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
    "intermediate_size": 2880, "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8,
    "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
    "quantization_config": {"modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
        "lm_head"], "quant_method": "mxfp4"},
    "rms_norm_eps": 1e-05, "rope_scaling": {
        "beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
        "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128,
    "swiglu_limit": 7.0, "tie_word_embeddings": False, "transformers_version": "4.55.0.dev0",
    "use_cache": True, "vocab_size": 201088}


def _write(tmp_path, raw):
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / "config.json").write_text(json.dumps(raw))
  return str(tmp_path)


def _v3_params():
  """DeepSeek-V3's parameter count (no multi-token-prediction layer), by hand."""
  d, v, n, l = 7168, 129280, 128, 61
  attn = (d * 1536 + 1536 + 1536 * n * 192 + d * 576 + 512 + 2 * 512 * n * 128
          + n * 128 * d + 2 * d)
  dense = 3 * d * 18432
  moe = d * 256 + 256 + 256 * 3 * d * 2048 + 3 * d * 2048
  return 2 * v * d + d + l * attn + 3 * dense + (l - 3) * moe


def test_plan_memory_from_a_deepseek_v3_config_json(tmp_path):
  cfg = serve_default.get_config()
  cfg.params_dir = _write(tmp_path / "v3", V3)
  cfg.model.max_len, cfg.mesh.expert, cfg.serve.max_num_seqs = 4096, 8, 16
  cfg = loading.resolve_for(cfg, "serve", log=lambda *_: None)  # as the script does
  assert (cfg.model.param_dtype, cfg.model.attention, cfg.model.router.expert_groups) == (
      "bfloat16", "mla", 8)
  plan = memory.planned(cfg.model, {"data": 1, "expert": 8, "tensor": 1},
                        cfg.logical_axis_rules, 16)
  # bf16, ~671e9 parameters; the selection bias (256 per MoE layer) stays float32 (api.py)
  assert plan["params_bytes"] == 2 * _v3_params() + 2 * 256 * (61 - 3)
  latent = 16 * 4096 * 61 * (512 + 64) * 4  # slots x positions x layers x (R + Hr), float32
  assert plan["cache_bytes"] == latent + 16 * 4  # + the slots' int32 lengths
  experts = 2 * (61 - 3) * 256 * 3 * 7168 * 2048  # split over the 8-way expert axis
  assert plan["params_bytes_per_device"] == plan["params_bytes"] - experts * 7 // 8


def test_gpt_oss_config_json_alone_plans_in_bf16(tmp_path):
  m = hf.model_config(_write(tmp_path / "oss", GPT_OSS_20B))
  assert (m.param_dtype, m.num_experts, m.router.k, m.sliding_window) == (
      "bfloat16", 32, 4, 128)
  assert m.layer_types[:2] == ("sliding", "full") and (m.rope_type, m.rope_factor) == ("yarn", 32)


def test_largest_fitting_keeps_router_groups_and_dense_layers():
  """largest_fitting varies experts in whole groups of >= 2 (a V3 router cannot take the top 2
  of a smaller group) and measures layers past the dense first ones."""
  m = hf.model_config(os.path.join(FIXTURES, "deepseek_v3"))  # 8 experts in 4 groups, k 2
  rules = serve_default.get_config().logical_axis_rules
  mesh = {"data": 1, "expert": 2, "tensor": 1}
  plan = memory.largest_fitting(m, mesh, rules, 4, memory.planned(m, mesh, rules, 4)[
      "params_bytes_per_device"] * 3)
  assert plan["largest_num_experts"] % 4 == 0 and plan["largest_num_experts"] >= 8
  assert plan["largest_num_layers"] >= 2
