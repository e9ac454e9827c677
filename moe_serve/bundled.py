"""Model directories: the bundled default model (models/default, see MODEL.md) and any other export.

A model directory holds
- `config.json`: the full config the model was trained with (its `model` section is what counts);
- `params/`: an Orbax checkpoint of the parameters only, written on any device topology;
- `params_digest.json`: a SHA-256 digest of every parameter array, written at export, which loading
  verifies (so a flipped byte is an error, never a silently wrong model).

This module reads and writes that format. Placing the parameters on devices (one, or a mesh) is
`moe_serve/loading.py`, the one loading path every script goes through.
"""
import hashlib
import json
import os

import jax
import ml_collections
import numpy as np

from moe_serve import checkpoint
from moe_serve import config as config_lib
from moe_serve import files

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "models", "default")
DIGEST_FILE = "params_digest.json"
DIGEST_ALGORITHM = "sha256"


class IntegrityError(checkpoint.CheckpointError):
  """Restored parameters differ from the digest recorded at export, or hold NaN/inf."""


def array_name(path):
  """`block_0/attn/q/kernel` for a tree path of the parameter dict."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _host(x):
  """A host copy of one array (gathered across processes when it spans several)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _array_digest(host):
  h = hashlib.new(DIGEST_ALGORITHM)
  h.update(f"{host.dtype.str}{host.shape}".encode())
  h.update(np.ascontiguousarray(host).tobytes())
  return h.hexdigest()


def all_finite(host):
  """Whether a host array holds no NaN/inf (any float dtype, bfloat16 included)."""
  return host.dtype.kind not in "fV" or bool(np.isfinite(host.astype(np.float32)).all())


def digest(params):
  """{array name: {shape, dtype, sha256}} over every parameter, one host copy at a time."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    host = _host(x)
    out[array_name(path)] = {"shape": list(host.shape), "dtype": str(host.dtype),
                             DIGEST_ALGORITHM: _array_digest(host)}
  return out


def verify(directory, params, recorded):
  """Raises IntegrityError naming `directory` and the first array that holds NaN/inf or whose
  bytes differ from `recorded` (a `digest()` dict); checks one host copy at a time."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  names = [array_name(p) for p, _ in flat]
  missing = sorted(set(recorded) ^ set(names))
  if missing:
    raise IntegrityError(f"parameters in {directory} do not match {DIGEST_FILE}: arrays "
                         f"{missing[:5]} are in one but not the other")
  for name, (_, x) in zip(names, flat):
    host = _host(x)
    if _array_digest(host) != recorded[name][DIGEST_ALGORITHM]:
      raise IntegrityError(
          f"parameters in {directory}: array {name} differs from the {DIGEST_ALGORITHM} digest "
          f"recorded at export ({DIGEST_FILE}); the files are corrupt or were changed after "
          "export: restore them from the source (e.g. `git checkout` for models/default) or "
          "re-export the model")
    if not all_finite(host):
      bad = int((~np.isfinite(host.astype(np.float32))).sum())
      raise IntegrityError(f"parameters in {directory}: array {name} holds {bad} NaN/inf values "
                           "(as exported); refusing to serve them")


def export(directory, cfg, params, step):
  """Writes `cfg`, `params` and their digest as a model directory (replacing the params at
  `step`). The digest is written last, so a directory whose export was killed fails to load."""
  os.makedirs(directory, exist_ok=True)
  digest_path = os.path.join(directory, DIGEST_FILE)
  if os.path.exists(digest_path):
    os.remove(digest_path)
  files.write_text_atomic(os.path.join(directory, "config.json"),
                          cfg.to_json(indent=2, sort_keys=True) + "\n")
  mngr = checkpoint.manager(os.path.join(directory, "params"), max_to_keep=1)
  checkpoint.save(mngr, int(step), params, force=True)
  record = {"step": int(step), "algorithm": DIGEST_ALGORITHM, "arrays": digest(params)}
  files.write_text_atomic(digest_path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def _read_json(directory, name, what):
  path = os.path.join(directory, name)
  if not os.path.exists(path):
    raise checkpoint.CheckpointError(f"{directory} is not a model directory: {name} is missing "
                                     f"({what}); export one with scripts/train.py --export_dir")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise checkpoint.CheckpointError(f"{path} is unreadable ({e}); restore it or re-export "
                                     "the model") from None


def load_model_config(directory=DEFAULT_DIR):
  """The (validated) `model` section of the config a model directory was trained with."""
  raw = _read_json(directory, "config.json", "the model's config")
  if not isinstance(raw, dict) or "model" not in raw:
    raise checkpoint.CheckpointError(f"{directory}/config.json has no `model` section")
  model = config_lib.with_model_defaults(ml_collections.ConfigDict(raw["model"]))
  try:
    config_lib.validate_model(model)
  except config_lib.ConfigError as e:
    raise checkpoint.CheckpointError(f"{directory}/config.json: {e}") from None
  return model


def load_digest(directory):
  """(step, {array name: digest}) recorded at export."""
  record = _read_json(directory, DIGEST_FILE, "the parameter digest written at export")
  try:
    return int(record["step"]), record["arrays"]
  except (KeyError, TypeError, ValueError):
    raise checkpoint.CheckpointError(f"{directory}/{DIGEST_FILE} lacks `step` or `arrays`; "
                                     "re-export the model") from None


def restore(directory, abstract_params):
  """Parameters restored onto `abstract_params` (ShapeDtypeStructs carrying the target
  shardings), verified against the export digest; returns (params, step)."""
  step, recorded = load_digest(directory)
  mngr = checkpoint.manager(os.path.join(directory, "params"), create=False)
  params = checkpoint.restore(mngr, abstract_params, step)
  verify(directory, params, recorded)
  return params, step
