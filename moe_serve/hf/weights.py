"""HF safetensors tensors -> moe_serve parameters, one parameter's host copy at a time.

`read(directory, model_cfg, hf_cfg, param_shapes, place)` walks moe_serve's parameter tree
(hf/tensors.py says which HF tensors make each parameter and how); for each parameter it reads
those tensors (dequantising FP8 and MXFP4 ones to the parameter's dtype, hf/quant.py),
transposes torch's [out, in] Linear layout, stacks or splits experts, checks names, shapes and
finiteness, hands the host array to `place(path, host)` (which puts it on its devices) and drops
it. So loading never holds more than one parameter on the host beyond what `place` keeps. Every
tensor in the files must be used: a leftover one (an output bias, say) is a feature we do not
implement, and an error; only DeepSeek's multi-token-prediction layers (after the last layer,
never run by the next-token forward) are skipped.

Axis letters (docs/design.md section 2): D model width, E experts, F expert hidden width, N
heads, H head width; latent attention: Hc the KV latent (kv_lora_rank), Hq the query latent
(q_lora_rank), Hn / Hr / Hv the non-rotary, rotary and value head widths.
"""
import json
import os

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' numpy reader)
import numpy as np
from safetensors import safe_open

from moe_serve import bundled, checkpoint
from moe_serve.hf import config as hf_config
from moe_serve.hf import newer, quant, tensors

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_BUFFERS = ("rotary_emb.inv_freq",)  # non-parameter buffers some exports include


class HFCheckpointError(checkpoint.CheckpointError):
  """An HF checkpoint that is missing, truncated, or does not match its config."""


def index(directory):
  """{tensor name: safetensors file} for a single-file or sharded (index.json) checkpoint."""
  single, sharded = (os.path.join(directory, f) for f in (SINGLE_FILE, INDEX_FILE))
  if os.path.exists(sharded):
    try:
      with open(sharded, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
      raise HFCheckpointError(f"{sharded} is unreadable or has no weight_map ({e})") from None
    files = {name: os.path.join(directory, fname) for name, fname in weight_map.items()}
  elif os.path.exists(single):
    files = {name: single for name in _keys(single)}
  else:
    raise HFCheckpointError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")
  missing = sorted({f for f in files.values() if not os.path.exists(f)})
  if missing:
    raise HFCheckpointError(f"{directory}: shard files {missing} named by {INDEX_FILE} are "
                            "missing")
  return files


def _open(path):
  try:
    return safe_open(path, framework="numpy")
  except Exception as e:  # safetensors raises its own types for truncated or garbled files
    raise HFCheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                            f"{e}); the download or copy may be truncated") from None


def _keys(path):
  with _open(path) as f:
    return list(f.keys())


_FLOAT_NAMES = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}
# Tensors transformers keeps in float32 whatever the model's dtype (DeepSeek-V3's selection bias,
# shipped in float32 beside bf16 weights): they do not decide the checkpoint's dtype.
_OWN_DTYPE = ("e_score_correction_bias",)


def stored_dtype(files):
  """The floating dtype the checkpoint's weights are stored in (one name, e.g. 'bfloat16'); FP8
  and MXFP4 tensors and their scales do not count (they are dequantised to it), nor tensors
  transformers keeps in float32 (_OWN_DTYPE). Mixed dtypes give 'float32'."""
  dtypes = set()
  for path in sorted(set(files.values())):
    with _open(path) as f:
      for k in f.keys():
        dtype = str(f.get_slice(k).get_dtype())
        quantised = dtype in quant.QUANTISED_DTYPES or k.endswith(quant.SCALE_SUFFIXES)
        if not quantised and not k.endswith(_OWN_DTYPE):
          dtypes.add(dtype)
  unknown = sorted(dtypes - set(_FLOAT_NAMES))
  if unknown:
    raise HFCheckpointError(f"tensor dtypes {unknown} are not supported (only "
                            f"{sorted(_FLOAT_NAMES)}, and FP8 / MXFP4 with their scales)")
  return _FLOAT_NAMES[dtypes.pop()] if len(dtypes) == 1 else "float32"


def _read(files, name):
  """One tensor as a host array (float8 ones through quant.read_raw). The file is opened for
  this read alone, so its memory map (whose touched pages count as resident memory) is released
  right after."""
  path = files.get(name)
  if path is None:
    raise HFCheckpointError(f"tensor {name} is missing from the checkpoint")
  try:
    with _open(path) as f:
      if str(f.get_slice(name).get_dtype()) in quant.QUANTISED_DTYPES:
        return quant.read_raw(path, name)
      return f.get_tensor(name)
  except HFCheckpointError:
    raise
  except Exception as e:
    raise HFCheckpointError(f"tensor {name} in {path} could not be read ({type(e).__name__}: "
                            f"{e}); the file may be truncated") from None


class _Reader:
  """Reads HF tensors by name, dequantising FP8 (`<name>_scale_inv` beside it) and MXFP4
  (`<name>_blocks` / `_scales` instead of it) to `dtype`; records every file tensor it used."""

  def __init__(self, files, quantization):
    self.files, self.quantization, self.used = files, quantization, set()

  def has(self, name):
    return name in self.files or name + "_blocks" in self.files

  def __call__(self, name, dtype):
    files = self.files
    if name not in files and name + "_blocks" in files:
      blocks, scales = _read(files, name + "_blocks"), _read(files, name + "_scales")
      self._expect("mxfp4", name)
      self.used.update((name + "_blocks", name + "_scales"))
      return self._dequantize(name, quant.mxfp4_dequantize, blocks, scales, dtype)
    x = _read(files, name)
    self.used.add(name)
    if name + "_scale_inv" in files:
      self._expect("fp8", name)
      self.used.add(name + "_scale_inv")
      scale = _read(files, name + "_scale_inv")
      return self._dequantize(name, quant.fp8_dequantize, x, scale,
                              self.quantization["block"], dtype)
    if x.dtype.itemsize < 2:  # float8 or uint8: a quantised tensor without its scales
      raise HFCheckpointError(f"tensor {name} is stored as {x.dtype} without the scales that "
                              "would dequantise it (weight_scale_inv, or _blocks/_scales)")
    return x

  def _expect(self, method, name):
    got = (self.quantization or {}).get("method")
    if got != method:
      raise HFCheckpointError(f"tensor {name} is stored in {method}, but config.json's "
                              f"quantization_config.quant_method is {got!r}")

  @staticmethod
  def _dequantize(name, fn, *args):
    try:
      return fn(*args)
    except ValueError as e:
      raise HFCheckpointError(f"tensor {name}: {e}") from None


def _deinterleave(x, hr):
  """The last `hr` entries of the last axis from DeepSeek's pairs (2i, 2i+1) to halves."""
  order = np.concatenate([np.arange(0, hr, 2), np.arange(1, hr, 2)]) + x.shape[-1] - hr
  return np.concatenate([x[..., :x.shape[-1] - hr], x[..., order]], -1)


def _assemble(how, path, names, shape, dtype, read_one, m):
  """The HF tensors `names` of one parameter, read one at a time by `read_one(name, dtype)`
  (shape checked), in moe_serve's layout `shape` and `dtype`, for the model section `m`."""
  expected = _source_shapes(how, path, shape, m)

  def get(name):
    x = read_one(name, dtype)
    if tuple(x.shape) != expected:
      raise HFCheckpointError(f"tensor {name} has shape {tuple(x.shape)}, the config implies "
                              f"{expected} (moe_serve parameter {'/'.join(path)} "
                              f"{tuple(shape)})")
    return x

  if how == "stack_T":  # experts' [F, D] (or [D, F]) Linear weights -> [E, D, F] (or [E, F, D])
    out = np.empty(shape, dtype)
    for e, name in enumerate(names):
      out[e] = get(name).T
    return out
  (name,) = names
  x = get(name)
  if how == "T":
    x = x.T
  elif how in ("heads", "row"):  # bias [N*H] -> [N, H]; a [1, D] Linear -> [D]
    x = x.reshape(shape)
  elif how in ("T_heads", "T_heads_rope"):  # [N*H, D] -> [D, N, H]; o [D, N*H] -> [N, H, D]
    x = x.T.reshape(shape)
  elif how == "T_rope":  # kv_a_proj_with_mqa [Hc+Hr, D] -> [D, Hc+Hr]
    x = x.T
  elif how in ("kv_b_k", "kv_b_v"):  # [N*(Hn+Hv), Hc] -> [Hc, N, Hn+Hv] -> key or value part
    r, n = shape[0], shape[1]
    x = x.T.reshape(r, n, m.qk_nope_head_dim + m.v_head_dim)
    x = x[..., :m.qk_nope_head_dim] if how == "kv_b_k" else x[..., m.qk_nope_head_dim:]
  elif how in ("fused_gate", "fused_up"):  # [E, 2F, D] -> [E, D, F]
    f = shape[2]
    x = (x[:, :f] if how == "fused_gate" else x[:, f:]).transpose(0, 2, 1)
  elif how == "fused_T":  # [E, D, F] -> [E, F, D]
    x = x.transpose(0, 2, 1)
  elif how in ("even", "odd"):  # gpt-oss's interleaved gate / up columns
    x = x[..., 0::2] if how == "even" else x[..., 1::2]
  elif how != "copy":
    raise ValueError(how)
  if how.endswith("_rope"):
    x = _deinterleave(x, m.qk_rope_head_dim)
  return np.ascontiguousarray(x, dtype=dtype)


def _mtp_layer(name, model_cfg, hf_cfg):
  """Whether `name` belongs to a DeepSeek multi-token-prediction layer (layer index >=
  num_layers, at most num_nextn_predict_layers of them)."""
  extra = hf_cfg.get("num_nextn_predict_layers") or hf_cfg.get("num_mtp_layers") or 0
  return any(name.startswith(f"model.layers.{model_cfg.num_layers + j}.") for j in range(extra))


def read(directory, model_cfg, hf_cfg, param_shapes, place):
  """Reads every parameter of `param_shapes` (a tree of ShapeDtypeStructs) from the HF files of
  the model whose config.json is `hf_cfg`, calling `place(path, host_array) -> array`; returns
  the tree of what `place` returned."""
  files = index(directory)
  reader = _Reader(files, newer.quantization(hf_cfg))
  family = hf_config.family_of(hf_cfg)
  out = {}
  for path, names, how in tensors.tensor_map(model_cfg, family, reader.has):
    want = _lookup(param_shapes, path)
    host = _assemble(how, path, names, want.shape, want.dtype, reader, model_cfg)
    if not bundled.all_finite(host):
      raise HFCheckpointError(f"{directory}: parameter {'/'.join(path)} (from {names[0]}"
                              f"{' ...' if len(names) > 1 else ''}) holds NaN/inf values; "
                              "refusing to serve them")
    _insert(out, path, place(path, host))
    del host
  extra = sorted(n for n in set(files) - reader.used
                 if not n.endswith(_BUFFERS) and not _mtp_layer(n, model_cfg, hf_cfg))
  if extra:
    raise HFCheckpointError(f"{directory}: tensors {extra[:6]}{' ...' if len(extra) > 6 else ''}"
                            " are not used by the model the config describes (a feature "
                            "moe_serve does not implement?); refusing to drop them silently")
  return out


def _source_shapes(how, path, shape, m):
  """The shape each HF tensor must have for the parameter `path` of `shape`."""
  if how in ("T", "T_rope"):
    return tuple(reversed(shape))
  if how == "stack_T":
    return (shape[2], shape[1])
  if how == "copy":
    return tuple(shape)
  if how == "heads":
    return (shape[0] * shape[1],)
  if how == "row":
    return (1, shape[0])
  if how in ("kv_b_k", "kv_b_v"):  # [N*(Hn+Hv), Hc]
    return (shape[1] * (m.qk_nope_head_dim + m.v_head_dim), shape[0])
  if how in ("fused_gate", "fused_up"):
    return (shape[0], 2 * shape[2], shape[1])
  if how == "fused_T":
    return (shape[0], shape[2], shape[1])
  if how in ("even", "odd"):  # w: [E, D, F] from [E, D, 2F]; b: [E, F] from [E, 2F]
    return tuple(shape[:-1]) + (2 * shape[-1],)
  if path[-1] == "wo":  # [N, H, D] from o_proj [D, N*H]
    return (shape[2], shape[0] * shape[1])
  return (shape[1] * shape[2], shape[0])  # [D, N, H] from q/k/v_proj [N*H, D]


def _lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _insert(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
