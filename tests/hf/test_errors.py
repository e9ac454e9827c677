"""What the HF importer refuses, each with an error that names the field, tensor or file:
an unsupported model_type, rope scaling, a sliding window shorter than max_len, an unknown
config field, a truncated safetensors file, a missing tensor, a shape mismatch and a tensor the
config does not use. A checkpoint sharded over two files (the mixtral fixture) loads.
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
from tests.hf.test_families import FIXTURES


def _raw(family):
  with open(os.path.join(FIXTURES, family, "config.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.parametrize("family, change, words", [
    ("mixtral", {"model_type": "llama"}, r"model_type='llama' is not supported; supported "
                                         r"families: \['mixtral', 'qwen2_moe'"),
    ("mixtral", {"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0}},
     r"rope_type='yarn': only plain rotary"),
    ("mixtral", {"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_scaling="),
    ("mixtral", {"sliding_window": 32}, r"sliding_window=32 is shorter than max_len=256"),
    ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 16}, r"sliding_window=16"),
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
