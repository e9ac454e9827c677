"""Which HF config fields each family may carry: honoured (mapped by hf/config.py), checked to
hold a value we implement, or known not to change inference (`INERT`). A field on none of these
lists is refused by name (hf/config.py), so a new option is never silently ignored.
"""
FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss")
# model_types that are another family's architecture under their own name: Kimi K2 ships
# DeepSeek-V3's architecture (its config.json says "kimi_k2" and DeepseekV3ForCausalLM).
ALIASES = {"kimi_k2": "deepseek_v3"}
MLA_FAMILIES = ("deepseek_v2", "deepseek_v3")

# Fields that do not change greedy inference: training (losses, init, dropout at 0, parallelism
# plans), cache bookkeeping, labels, token ids (the tokenizer's business), dtype (the weights'
# files say it), remote-code maps, and DeepSeek's multi-token-prediction modules (extra layers
# after the last one, which the next-token forward never runs; hf/weights.py skips their tensors).
INERT = {
    "architectures", "transformers_version", "_name_or_path", "model_type", "dtype",
    "torch_dtype", "initializer_range", "use_cache", "output_router_logits", "router_aux_loss_coef",
    "router_z_loss_coef", "router_jitter_noise", "output_hidden_states", "output_attentions",
    "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "pad_token_id", "bos_token_id", "eos_token_id", "tokenizer_class",
    "tie_encoder_decoder", "torchscript", "use_bfloat16",
    "pruned_heads", "add_cross_attention", "cross_attention_hidden_size", "finetuning_task",
    "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params", "bad_words_ids",
    "begin_suppress_tokens", "tf_legacy_loss", "quantization_config_ignored",
    "auto_map", "aux_loss_alpha", "seq_aux", "ep_size", "pretraining_tp",
    "num_nextn_predict_layers", "num_mtp_layers",
}
# Fields every family maps the same way (hf/config.py).
COMMON = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
          "rope_theta", "rope_parameters", "rope_scaling", "tie_word_embeddings", "hidden_act",
          "attention_dropout", "num_experts_per_tok", "attention_bias", "quantization_config"}
_DEEPSEEK = {"intermediate_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
             "routed_scaling_factor", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim",
             "qk_nope_head_dim", "v_head_dim", "qk_head_dim", "n_group", "topk_group",
             "first_k_dense_replace", "moe_layer_freq", "norm_topk_prob", "topk_method",
             "scoring_func"}
FAMILY_FIELDS = {
    "mixtral": {"intermediate_size", "num_local_experts", "sliding_window"},
    "qwen2_moe": {"intermediate_size", "num_experts", "moe_intermediate_size",
                  "shared_expert_intermediate_size", "norm_topk_prob", "decoder_sparse_step",
                  "mlp_only_layers", "qkv_bias", "sliding_window", "use_sliding_window",
                  "max_window_layers", "layer_types"},
    "qwen3_moe": {"intermediate_size", "num_experts", "num_local_experts",
                  "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step",
                  "mlp_only_layers", "sliding_window", "use_sliding_window",
                  "max_window_layers"},
    "olmoe": {"intermediate_size", "num_experts", "norm_topk_prob", "clip_qkv"},
    "deepseek_v2": _DEEPSEEK | {"mlp_bias"},
    "deepseek_v3": _DEEPSEEK | {"rope_interleave"},
    "gpt_oss": {"intermediate_size", "num_local_experts", "sliding_window", "layer_types",
                "swiglu_limit", "swiglu_alpha", "experts_per_token", "initial_context_length"},
}
