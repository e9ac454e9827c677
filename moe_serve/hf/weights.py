"""HF safetensors tensors -> moe_serve parameters, one parameter's host copy at a time.

`read(directory, model_cfg, family, place)` walks moe_serve's parameter tree; for each parameter
it reads the HF tensors that make it (transposed from torch's [out, in] Linear layout, experts
stacked), checks names, shapes and finiteness, hands the host array to `place(path, host)` (which
puts it on its devices) and drops it. So loading never holds more than one parameter on the host
beyond what `place` keeps. Every tensor in the files must be used: a leftover one (an output bias,
say) is a feature we do not implement, and an error.
"""
import json
import os

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' numpy reader)
import numpy as np
from safetensors import safe_open

from moe_serve import bundled, checkpoint
from moe_serve.model.transformer import is_moe_layer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_BUFFERS = ("rotary_emb.inv_freq",)  # non-parameter buffers some exports include


class HFCheckpointError(checkpoint.CheckpointError):
  """An HF checkpoint that is missing, truncated, or does not match its config."""


def _mlp_names(family):
  if family == "mixtral":
    return "block_sparse_moe", ("w1", "w3", "w2")
  return "mlp", ("gate_proj", "up_proj", "down_proj")


def tensor_map(model_cfg, family):
  """[(param path, [HF tensor names], how)] for every moe_serve parameter. `how` says how the
  HF tensors become the parameter: "T" transpose a Linear weight, "stack_T" stack experts'
  transposed weights, "copy", or a reshape named by the target's shape ("T_heads")."""
  m = model_cfg
  out = [(("embedding",), ["model.embed_tokens.weight"], "copy"),
         (("final_norm", "scale"), ["model.norm.weight"], "copy")]
  if not m.tie_embeddings:
    out.append((("unembed",), ["lm_head.weight"], "T"))
  moe_prefix, (gate, up, down) = _mlp_names(family)
  for i in range(m.num_layers):
    hf, me = f"model.layers.{i}", f"block_{i}"
    att = f"{hf}.self_attn"
    out += [((me, "norm_attn", "scale"), [f"{hf}.input_layernorm.weight"], "copy"),
            ((me, "norm_ffn", "scale"), [f"{hf}.post_attention_layernorm.weight"], "copy"),
            ((me, "attn", "wq"), [f"{att}.q_proj.weight"], "T_heads"),
            ((me, "attn", "wk"), [f"{att}.k_proj.weight"], "T_heads"),
            ((me, "attn", "wv"), [f"{att}.v_proj.weight"], "T_heads"),
            ((me, "attn", "wo"), [f"{att}.o_proj.weight"], "T_heads")]
    if m.attn_bias:
      out += [((me, "attn", f"b{x}"), [f"{att}.{x}_proj.bias"], "heads") for x in "qkv"]
    if m.qk_norm != "none":
      out += [((me, "attn", f"{x}_norm", "scale"), [f"{att}.{x}_norm.weight"], "copy")
              for x in "qk"]
    if not is_moe_layer(m, i):
      out += [((me, "mlp", ours), [f"{hf}.mlp.{theirs}.weight"], "T")
              for ours, theirs in (("w_gate", gate), ("w_up", up), ("w_down", down))]
      continue
    moe = f"{hf}.{moe_prefix}"
    out.append(((me, "moe", "w_router"), [f"{moe}.gate.weight"], "T"))
    for ours, theirs in (("w_gate", gate), ("w_up", up), ("w_down", down)):
      names = [f"{moe}.experts.{e}.{theirs}.weight" for e in range(m.num_experts)]
      out.append(((me, "moe", "experts", ours), names, "stack_T"))
    if m.shared_expert:
      out += [((me, "moe", "shared_expert", ours), [f"{moe}.shared_expert.{theirs}.weight"], "T")
              for ours, theirs in (("w_gate", "gate_proj"), ("w_up", "up_proj"),
                                   ("w_down", "down_proj"))]
    if m.shared_expert_gate:
      out.append(((me, "moe", "w_shared_gate"), [f"{moe}.shared_expert_gate.weight"], "row"))
  return out


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


def stored_dtype(files):
  """The floating dtype the checkpoint's tensors are stored in (one name, e.g. 'bfloat16')."""
  dtypes = set()
  for path in sorted(set(files.values())):
    with _open(path) as f:
      dtypes |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
  names = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}
  unknown = sorted(dtypes - set(names))
  if unknown:
    raise HFCheckpointError(f"tensor dtypes {unknown} are not supported (only {sorted(names)})")
  return names[dtypes.pop()] if len(dtypes) == 1 else "float32"


def _read(files, name):
  """One tensor as a host array. The file is opened for this read alone, so its memory map (whose
  touched pages count as resident memory) is released right after."""
  path = files.get(name)
  if path is None:
    raise HFCheckpointError(f"tensor {name} is missing from the checkpoint")
  try:
    with _open(path) as f:
      return f.get_tensor(name)
  except HFCheckpointError:
    raise
  except Exception as e:
    raise HFCheckpointError(f"tensor {name} in {path} could not be read ({type(e).__name__}: "
                            f"{e}); the file may be truncated") from None


def _assemble(how, path, names, shape, dtype, read_one):
  """The HF tensors `names` of one parameter, read one at a time by `read_one(name)` (shape
  checked), in moe_serve's layout `shape` and `dtype`."""
  expected = _source_shapes(how, path, shape)

  def get(name):
    x = read_one(name)
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
  elif how == "T_heads":  # q/k/v [N*H, D] -> [D, N, H]; o [D, N*H] -> [N, H, D]
    x = x.T.reshape(shape)
  elif how != "copy":
    raise ValueError(how)
  return np.ascontiguousarray(x, dtype=dtype)


def read(directory, model_cfg, family, param_shapes, place):
  """Reads every parameter of `param_shapes` (a tree of ShapeDtypeStructs) from the HF files,
  calling `place(path, host_array) -> array`; returns the tree of what `place` returned."""
  files = index(directory)
  used = set()
  out = {}
  for path, names, how in tensor_map(model_cfg, family):
    want = _lookup(param_shapes, path)
    host = _assemble(how, path, names, want.shape, want.dtype, lambda n: _read(files, n))
    if not bundled.all_finite(host):
      raise HFCheckpointError(f"{directory}: parameter {'/'.join(path)} (from {names[0]}"
                              f"{' ...' if len(names) > 1 else ''}) holds NaN/inf values; "
                              "refusing to serve them")
    _insert(out, path, place(path, host))
    used.update(names)
    del host
  extra = sorted(n for n in set(files) - used if not n.endswith(_BUFFERS))
  if extra:
    raise HFCheckpointError(f"{directory}: tensors {extra[:6]}{' ...' if len(extra) > 6 else ''}"
                            " are not used by the model the config describes (a feature "
                            "moe_serve does not implement?); refusing to drop them silently")
  return out


def _source_shapes(how, path, shape):
  """The shape each HF tensor must have for the parameter `path` of `shape`."""
  if how == "T":
    return tuple(reversed(shape))
  if how == "stack_T":
    return (shape[2], shape[1])
  if how == "copy":
    return tuple(shape)
  if how == "heads":
    return (shape[0] * shape[1],)
  if how == "row":
    return (1, shape[0])
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
