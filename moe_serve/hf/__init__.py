"""Hugging Face MoE checkpoints (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3 and Kimi K2,
gpt-oss) as moe_serve models.

  from moe_serve import hf
  model_cfg, params = hf.load("path/to/hf_model_dir")            # one device
  model_cfg, params = hf.load(path, mesh=mesh, rules=cfg.logical_axis_rules)

`load` maps `config.json` to a validated model section (hf/config.py: every field honoured,
checked or known to be inert, else an error), then reads the safetensors files one parameter at a
time straight onto the target shardings (hf/weights.py), keeping the checkpoint's dtype (bf16
stays bf16 in memory; compute is `model.dtype`). Scripts reach it through `--config.params_dir`
(moe_serve/loading.py). docs/hf.md has the mapping and what is refused.
"""
import json
import os

from moe_serve import checkpoint
from moe_serve.hf import config as hf_config
from moe_serve.hf import weights as hf_weights
from moe_serve.parallel import sharding

CONFIG_FILE = "config.json"


def is_hf_dir(directory):
  """Whether `directory` looks like an HF model directory (config.json with a model_type) rather
  than a moe_serve export (whose config.json has a `model` section). Its weights may be absent:
  a config.json alone is enough to plan memory (scripts/plan_memory.py); loading then names the
  missing safetensors files."""
  try:
    with open(os.path.join(directory, CONFIG_FILE), encoding="utf-8") as f:
      raw = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(raw, dict) and "model_type" in raw


def _has_weights(directory):
  return any(os.path.exists(os.path.join(directory, n))
             for n in (hf_weights.SINGLE_FILE, hf_weights.INDEX_FILE))


def read_config(directory):
  """The raw HF config dict of `directory` (CheckpointError if missing or unreadable)."""
  path = os.path.join(directory, CONFIG_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except OSError:
    raise checkpoint.CheckpointError(f"{directory} has no {CONFIG_FILE}") from None
  except ValueError as e:
    raise checkpoint.CheckpointError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(raw, dict):
    raise checkpoint.CheckpointError(f"{path} does not hold a JSON object")
  return raw


def model_config(directory, max_len=None):
  """The moe_serve model section for the HF model in `directory` (param_dtype = the files'; a
  directory with config.json alone: its `torch_dtype` / `dtype` field, else bfloat16 for a
  quantised checkpoint (what its dequantised weights are loaded as), else float32)."""
  raw = read_config(directory)
  m = hf_config.model_config(raw, max_len)
  if _has_weights(directory):
    m.param_dtype = hf_weights.stored_dtype(hf_weights.index(directory))
  else:
    named = raw.get("torch_dtype") or raw.get("dtype")
    if named is None and raw.get("quantization_config"):
      named = "bfloat16"
    m.param_dtype = {"bfloat16": "bfloat16", "float16": "float16"}.get(named, "float32")
  return m


def load_params(directory, model_cfg, mesh=None, rules=None):
  """The parameters of the HF model in `directory` for `model_cfg` (as from `model_config`,
  any router), placed on `mesh` (or one device) one tensor at a time."""
  hf_cfg = read_config(directory)
  plan = sharding.plan(model_cfg, mesh, rules)

  def place(path, host):
    target = plan.params
    for key in path:
      target = target[key]
    return sharding.put(host, target)

  return hf_weights.read(directory, model_cfg, hf_cfg, plan.param_shapes, place)


def load(directory, mesh=None, rules=None, max_len=None):
  """(model config, params) of the HF model in `directory`; see the module docstring."""
  model_cfg = model_config(directory, max_len)
  return model_cfg, load_params(directory, model_cfg, mesh, rules)
