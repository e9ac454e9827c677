"""What the HF importer refuses, each with an error that names the field, tensor or file:
an unsupported model_type, rope type or rope key, DeepSeek and gpt-oss options it does not
implement, a quantisation method other than fp8 / mxfp4, an unknown config field, a truncated
safetensors file, a missing tensor, a shape mismatch and a tensor the config does not use. What
it maps: rope scaling and sliding windows for every family. A checkpoint sharded over two files
(the mixtral fixture) loads; a config.json alone plans memory.
"""
import json
import os
import shutil

import ml_dtypes  # noqa: F401  (bfloat16 arrays for safetensors.numpy)
import pytest
from safetensors.numpy import load_file, save_file

from moe_serve import checkpoint, hf
from moe_serve.hf import config as hf_config
from moe_serve.hf import weights as hf_weights
from tests.helpers.hf_fixtures import FIXTURES


def _raw(family):
  with open(os.path.join(FIXTURES, family, "config.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.parametrize("family, change, words", [
    ("mixtral", {"model_type": "llama"}, r"model_type='llama' is not supported; supported "
                                         r"families: \['mixtral', 'qwen2_moe'"),
    ("mixtral", {"rope_parameters": {"rope_theta": 1e4, "rope_type": "dynamic", "factor": 4.0}},
     r"rope_parameters.rope_type='dynamic' is not supported"),
    ("mixtral", {"rope_scaling": {"type": "longrope", "factor": 2.0}},
     r"rope_scaling.rope_type='longrope' is not supported"),
    ("mixtral", {"rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0,
                                                    "beta_fast": 4}},
     r"rope_scaling has keys \['beta_fast'\] that rope_type='linear' does not take"),
    ("mixtral", {"rope_parameters": {"rope_theta": 1e4, "rope_type": "llama3", "factor": 8.0}},
     r"rope_type='llama3' has no low_freq_factor"),
    ("mixtral", {"rope_parameters": {"rope_theta": 1e4, "partial_rotary_factor": 0.5}},
     r"partial_rotary_factor=0.5 is not supported"),
    ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1},
     r"max_window_layers=1 with use_sliding_window"),
    ("qwen2_moe", {"layer_types": ["sliding_attention", "full_attention"]},
     r"layer_types has sliding layers but use_sliding_window=False"),
    ("gpt_oss", {"layer_types": ["sliding_attention", "chunked_attention"]},
     r"layer_types has unsupported entries \['chunked_attention'\]"),
    ("deepseek_v3", {"moe_layer_freq": 2}, r"moe_layer_freq=2 must be 1"),
    ("deepseek_v3", {"num_key_value_heads": 2}, r"num_key_value_heads=2 must be 4"),
    ("deepseek_v3", {"topk_method": "group_limited_greedy"},
     r"topk_method='group_limited_greedy' is not supported for deepseek_v3"),
    ("deepseek_v3", {"scoring_func": "softmax"}, r"scoring_func='softmax' is not supported"),
    ("deepseek_v3", {"rope_interleave": False}, r"rope_interleave=False is not supported"),
    ("deepseek_v3", {"attention_bias": True}, r"attention_bias=True is not supported"),
    ("deepseek_v3", {"quantization_config": {"quant_method": "awq", "bits": 4}},
     r"quantization_config.quant_method='awq' is not supported"),
    ("deepseek_v3", {"quantization_config": {"quant_method": "fp8", "activation_scheme":
                                             "static"}},
     r"quantization_config.activation_scheme='static' is not supported"),
    ("deepseek_v2", {"norm_topk_prob": True}, r"norm_topk_prob=True is not supported for "
                                              r"deepseek_v2"),
    ("deepseek_v2", {"topk_method": "noaux_tc"}, r"topk_method='noaux_tc' is not supported"),
    ("deepseek_v2", {"mlp_bias": True}, r"mlp_bias=True is not supported"),
    ("gpt_oss", {"experts_per_token": 4}, r"experts_per_token=4 must be 2"),
    ("gpt_oss", {"use_sliding_window": True}, r"fields \['use_sliding_window'\] are not known"),
    ("mixtral", {"attn_logit_softcapping": 30.0}, r"fields \['attn_logit_softcapping'\] are "
                                                  r"not known for mixtral"),
    ("olmoe", {"clip_qkv": 8.0}, r"clip_qkv=8.0 is not supported for olmoe"),
    ("qwen2_moe", {"mlp_only_layers": [0]}, r"mlp_only_layers=\[0\] is not supported"),
    ("mixtral", {"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ("mixtral", {"num_experts_per_tok": 9}, r"model.router.k=9 exceeds model.num_experts=4"),
])
def test_unsupported_config_fields_are_named(family, change, words):
  raw = dict(_raw(family), **change)
  with pytest.raises(hf_config.HFConfigError, match=words):
    hf_config.model_config(raw)


def test_old_style_rope_theta_is_read():
  raw = _raw("mixtral")
  theta = raw.pop("rope_parameters")["rope_theta"]
  raw["rope_theta"] = theta
  assert hf_config.model_config(raw).rope_theta == theta


def test_rope_scaling_and_windows_are_mapped_for_every_family():
  """Legacy rope_scaling (`type`, top-level rope_theta) replaces rope_parameters, as transformers
  does; llama3 and linear keep their factors; Mixtral and Qwen windows become sliding_window
  (+ layer_types where only some layers slide); a Kimi K2 config maps as DeepSeek-V3."""
  raw = dict(_raw("mixtral"), rope_theta=5e5, sliding_window=16, rope_scaling={
      "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 64})
  m = hf_config.model_config(raw)
  assert (m.rope_type, m.rope_theta, m.rope_factor, m.rope_original_max_len) == (
      "llama3", 5e5, 8.0, 64)
  assert (m.sliding_window, m.layer_types) == (16, ())
  raw = dict(_raw("qwen2_moe"), use_sliding_window=True, sliding_window=8, max_window_layers=1)
  raw.pop("layer_types")
  m = hf_config.model_config(raw)  # transformers: even layers below max_window_layers slide
  assert (m.sliding_window, m.layer_types) == (8, ("sliding", "full"))
  m = hf_config.model_config(dict(_raw("qwen3_moe"), use_sliding_window=True, sliding_window=8,
                                  rope_parameters={"rope_theta": 1e4, "rope_type": "linear",
                                                   "factor": 2.0}))
  assert (m.sliding_window, m.layer_types, m.rope_type, m.rope_factor) == (8, (), "linear", 2.0)
  m = hf_config.model_config(dict(_raw("deepseek_v3"), model_type="kimi_k2"))
  assert (m.attention, m.router.score, m.router.expert_groups, m.rope_mscale_all_dim) == (
      "mla", "sigmoid", 4, 0.8)
  m = hf_config.model_config(_raw("gpt_oss"))
  assert (m.sliding_window, m.layer_types, m.rope_truncate, m.attn_sinks) == (
      6, ("sliding", "full"), False, True)


def _copy(tmp_path, family):
  directory = tmp_path / family
  shutil.copytree(os.path.join(FIXTURES, family), directory)
  return directory


def _rewrite(path, edit):
  tensors = load_file(str(path))
  edit(tensors)
  save_file(tensors, str(path))


def test_sharded_checkpoint_loads_from_two_files():
  files = hf_weights.index(os.path.join(FIXTURES, "mixtral"))
  assert len(set(files.values())) == 2
  model_cfg, _ = hf.load(os.path.join(FIXTURES, "mixtral"))
  assert model_cfg.num_experts == 4


def test_truncated_file_is_named(tmp_path):
  directory = _copy(tmp_path, "olmoe")
  path = directory / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(checkpoint.CheckpointError, match=r"model.safetensors .*truncated"):
    hf.load(str(directory))


def test_missing_tensor_is_named(tmp_path):
  directory = _copy(tmp_path, "olmoe")
  _rewrite(directory / "model.safetensors",
           lambda t: t.pop("model.layers.1.mlp.experts.2.up_proj.weight"))
  with pytest.raises(hf_weights.HFCheckpointError,
                     match=r"tensor model.layers.1.mlp.experts.2.up_proj.weight is missing"):
    hf.load(str(directory))


def test_shape_mismatch_is_named(tmp_path):
  directory = _copy(tmp_path, "qwen3_moe")
  def widen(t):
    name = "model.layers.0.self_attn.k_norm.weight"
    t[name] = t[name].repeat(2)
  _rewrite(directory / "model.safetensors", widen)
  with pytest.raises(hf_weights.HFCheckpointError,
                     match=r"k_norm.weight has shape \(32,\), the config implies \(16,\)"):
    hf.load(str(directory))


def test_unused_tensor_is_refused(tmp_path):
  directory = _copy(tmp_path, "qwen3_moe")
  def add_bias(t):
    t["model.layers.0.self_attn.o_proj.bias"] = t["model.norm.weight"].copy()
  _rewrite(directory / "model.safetensors", add_bias)
  with pytest.raises(hf_weights.HFCheckpointError,
                     match=r"o_proj.bias'\] are not used by the model"):
    hf.load(str(directory))
