"""The importer's output for the newer families (DeepSeek-V2/V3 with FP8 weights, gpt-oss with
MXFP4 experts) read into host arrays of the agreed parameter names and shapes, and run through
tests/hf/layout_oracle.py (a numpy forward in moe_serve's layouts driven by the model section):
logits within 1e-4 of transformers' and its greedy first tokens. This checks the tensor layouts,
the dequantisation and the config mapping without the JAX model (tests/hf/test_families.py
runs the model on the same fixtures). Also: the dequantisers against hand-written references,
partial FP8 blocks included; DeepSeek's multi-token-prediction layers skipped; an FP8 weight
without its scale refused; fused DeepSeek experts read as the per-expert ones.
"""
import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from moe_serve import hf
from moe_serve.hf import quant
from moe_serve.hf import weights as hf_weights
from moe_serve.model.transformer import is_moe_layer
from tests.hf import layout_oracle
from tests.helpers.hf_fixtures import FIXTURES, LOGIT_ATOL

NEWER = ("deepseek_v2", "deepseek_v3", "gpt_oss")


def _shapes(m):
  """{param path: ShapeDtypeStruct} as the agreed names and shapes (sinks and the selection
  bias in float32, the rest in param_dtype)."""
  dt, f32 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)
  s = lambda *shape, dtype=dt: jax.ShapeDtypeStruct(shape, dtype)
  D, N, V, E = m.d_model, m.num_heads, m.vocab_size, m.num_experts
  tree = {"embedding": s(V, D), "final_norm": {"scale": s(D)}, "unembed": s(D, V)}
  hn, hr, hv, r, rq = (m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim, m.kv_lora_rank,
                       m.q_lora_rank)
  for i in range(m.num_layers):
    if m.attention == "mla":
      a = {"wkv_a": s(D, r + hr), "kv_norm": {"scale": s(r)}, "wk_b": s(r, N, hn),
           "wv_b": s(r, N, hv), "wo": s(N, hv, D)}
      a.update({"wq_a": s(D, rq), "q_norm": {"scale": s(rq)}, "wq_b": s(rq, N, hn + hr)}
               if rq else {"wq": s(D, N, hn + hr)})
    else:
      M, H = m.num_kv_heads, m.head_dim
      a = {"wq": s(D, N, H), "wk": s(D, M, H), "wv": s(D, M, H), "wo": s(N, H, D),
           "bq": s(N, H), "bk": s(M, H), "bv": s(M, H), "bo": s(D), "sinks": s(N, dtype=f32)}
    block = {"attn": a, "norm_attn": {"scale": s(D)}, "norm_ffn": {"scale": s(D)}}
    F = m.d_ff_expert
    if not is_moe_layer(m, i):
      block["mlp"] = {"w_gate": s(D, m.d_ff), "w_up": s(D, m.d_ff), "w_down": s(m.d_ff, D)}
    else:
      ex = {"w_gate": s(E, D, F), "w_up": s(E, D, F), "w_down": s(E, F, D)}
      moe = {"w_router": s(D, E), "experts": ex}
      if m.expert_bias:
        ex.update(b_gate=s(E, F), b_up=s(E, F), b_down=s(E, D))
      if m.router.bias:
        moe["b_router"] = s(E)
      if m.router.selection_bias:
        moe["e_score_bias"] = s(E, dtype=f32)
      if m.shared_expert:
        S = m.d_ff_shared
        moe["shared_expert"] = {"w_gate": s(D, S), "w_up": s(D, S), "w_down": s(S, D)}
      block["moe"] = moe
    tree[f"block_{i}"] = block
  return tree


@pytest.mark.parametrize("family", NEWER)
def test_imported_layout_reproduces_transformers(family):
  directory = os.path.join(FIXTURES, family)
  with open(os.path.join(directory, "reference.json"), encoding="utf-8") as f:
    ref = json.load(f)
  logits = np.load(os.path.join(directory, "reference_logits.npz"))
  m = hf.model_config(directory)
  assert m.param_dtype == "bfloat16"
  params = hf_weights.read(directory, m, hf.read_config(directory), _shapes(m),
                           lambda path, host: host)
  worst = 0.0
  for p in ref["prompts"]:
    ours = layout_oracle.forward(m, params, p["prompt_ids"])
    worst = max(worst, float(np.abs(ours - logits[p["logits_key"]]).max()))
    assert int(ours[-1].argmax()) == p["greedy_ids"][0]
  assert worst <= LOGIT_ATOL, worst


def test_fp8_dequantisation_with_partial_blocks():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(200, 130)).astype(ml_dtypes.float8_e4m3fn)
  s = rng.uniform(0.5, 2.0, size=(2, 2)).astype(np.float32)
  out = quant.fp8_dequantize(q, s, (128, 128), np.float32)
  want = np.empty((200, 130), np.float32)
  for i in range(200):
    for j in range(130):
      want[i, j] = float(q[i, j]) * s[i // 128, j // 128]
  np.testing.assert_array_equal(out, want)
  e8m0 = np.array([[127, 128], [126, 130]], np.uint8)  # 1, 2, 0.5, 8
  out = quant.fp8_dequantize(q, e8m0, (128, 128), np.float32)
  np.testing.assert_array_equal(out[129, 129], float(q[129, 129]) * 8.0)
  with pytest.raises(ValueError, match=r"weight_scale_inv has shape \(2, 2\).*needs \(1, 2\)"):
    quant.fp8_dequantize(q[:100], s, (128, 128), np.float32)


def test_mxfp4_dequantisation_by_hand():
  blocks = np.zeros((1, 2, 1, 16), np.uint8)
  blocks[0, 0, 0, 0] = 0x3 | (0xA << 4)  # codes 3 (+1.5) then 10 (-1.0)
  blocks[0, 1, 0, 15] = 0x7 << 4  # the 32nd value of row 1: +6.0
  scales = np.array([[[127 + 2], [127 - 1]]], np.uint8)  # 4, 0.5
  out = quant.mxfp4_dequantize(blocks, scales, np.float32)  # [E, in = 32, out = 2]
  assert out.shape == (1, 32, 2)
  assert (out[0, 0, 0], out[0, 1, 0], out[0, 31, 1]) == (6.0, -4.0, 3.0)
  assert np.count_nonzero(out) == 3


def _indexed_copy(tmp_path, family, edit):
  """A copy of a fixture whose single file is listed by a model.safetensors.index.json, after
  `edit(weight_map, directory)`."""
  directory = tmp_path / family
  shutil.copytree(os.path.join(FIXTURES, family), directory)
  names = list(hf_weights.index(str(directory)))
  os.rename(directory / "model.safetensors", directory / "part-1.safetensors")
  weight_map = {n: "part-1.safetensors" for n in names}
  edit(weight_map, directory)
  (directory / hf_weights.INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))
  return str(directory)


def _read(directory):
  m = hf.model_config(directory)
  return hf_weights.read(directory, m, hf.read_config(directory), _shapes(m),
                         lambda path, host: host)


def test_mtp_layers_are_skipped_and_other_extra_layers_refused(tmp_path):
  def add(layer):
    def edit(weight_map, directory):
      save_file({f"model.layers.{layer}.eh_proj.weight": np.ones((2, 2), np.float32)},
                str(directory / "part-2.safetensors"))
      weight_map[f"model.layers.{layer}.eh_proj.weight"] = "part-2.safetensors"
    return edit
  _read(_indexed_copy(tmp_path / "a", "deepseek_v3", add(2)))  # num_nextn_predict_layers = 1
  with pytest.raises(hf_weights.HFCheckpointError, match=r"model.layers.3.eh_proj.weight'\] "
                                                         r"are not used"):
    _read(_indexed_copy(tmp_path / "b", "deepseek_v3", add(3)))


def test_fp8_weight_without_its_scale_is_refused(tmp_path):
  name = "model.layers.1.mlp.experts.3.up_proj.weight"
  directory = _indexed_copy(tmp_path, "deepseek_v3",
                            lambda weight_map, _: weight_map.pop(name + "_scale_inv"))
  with pytest.raises(hf_weights.HFCheckpointError, match=rf"tensor {name} is stored as "
                                                         r"float8_e4m3fn without the scales"):
    _read(directory)


def test_fused_deepseek_experts_read_as_per_expert_ones(tmp_path):
  """transformers holds DeepSeek experts fused (experts.gate_up_proj [E, 2F, D], gate rows
  first; experts.down_proj [E, D, F]); a checkpoint written that way imports to the same
  parameters as the per-expert one."""
  source = os.path.join(FIXTURES, "deepseek_v2")
  directory = tmp_path / "fused"
  shutil.copytree(source, directory)
  tensors = load_file(str(directory / "model.safetensors"))
  m = hf.model_config(source)
  prefix = "model.layers.1.mlp.experts"
  per = lambda e, n: tensors.pop(f"{prefix}.{e}.{n}_proj.weight")
  experts = range(m.num_experts)
  tensors[f"{prefix}.gate_up_proj"] = np.stack(
      [np.concatenate([per(e, "gate"), per(e, "up")]) for e in experts])
  tensors[f"{prefix}.down_proj"] = np.stack([per(e, "down") for e in experts])
  save_file(tensors, str(directory / "model.safetensors"))
  fused, plain = _read(str(directory)), _read(source)
  for name in ("w_gate", "w_up", "w_down"):
    np.testing.assert_array_equal(fused["block_1"]["moe"]["experts"][name],
                                  plain["block_1"]["moe"]["experts"][name])
