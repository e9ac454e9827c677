"""A resumable grid of config overrides: one subdirectory per run, each finished exactly once.

A run writes into a private temporary directory and becomes visible only by an atomic rename to
its final name, after its `result.json` is complete. So a sweep killed at any moment and started
again reruns only what had not finished, never a finished run, and leaves no truncated file in any
run directory. Leftover temporary directories of killed runs are removed on restart.
"""
import hashlib
import itertools
import json
import os
import shutil
import time

import tqdm

RESULT_FILE = "result.json"
MANIFEST_FILE = "sweep.json"
_TMP_PREFIX = ".tmp-"


def grid(axes):
  """Cartesian product of `{dotted.key: [values]}` in a stable order (first key varies slowest)."""
  keys = list(axes)
  for key in keys:
    if not isinstance(axes[key], (list, tuple)) or not axes[key]:
      raise ValueError(f"sweep axis {key!r} must be a non-empty list, got {axes[key]!r}")
  return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def run_name(overrides):
  """A readable, filesystem-safe, unique name for one grid point."""
  text = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items())
  safe = "".join(c if c.isalnum() or c in "=,._-" else "_" for c in text)[:120]
  digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
  return f"{safe}-{digest}" if safe else digest


def apply_overrides(cfg, overrides):
  """Returns a copy of `cfg` with dotted-key overrides applied; unknown keys are an error."""
  cfg = cfg.copy_and_resolve_references()
  for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      if p not in node:
        raise KeyError(f"sweep override {key!r}: config has no section {p!r}")
      node = node[p]
    if leaf not in node:
      raise KeyError(f"sweep override {key!r}: config has no field {leaf!r}")
    node[leaf] = value
  return cfg


def config_hash(cfg):
  """A short hash of everything in `cfg` but its `sweep` section (what the runs share)."""
  d = cfg.to_dict()
  d.pop("sweep", None)
  return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _check_same_config(workdir, digest):
  path = os.path.join(workdir, MANIFEST_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f).get("config_hash")
  if old is not None and old != digest:
    raise ValueError(f"{workdir} holds runs of another config (hash {old}, this one {digest}); "
                     "resuming would mix results: use a new --workdir (or delete this one)")


def _write_json_atomic(path, obj):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _clean_leftovers(workdir):
  for name in os.listdir(workdir):
    if name.startswith(_TMP_PREFIX):
      shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def run_sweep(base_cfg, axes, workdir, run_fn, progress=True, log=print):
  """Runs `run_fn(cfg, run_dir) -> dict` for every grid point not yet finished.

  Returns the list of `{"overrides", "name", "result"}` for all grid points, in grid order.
  """
  os.makedirs(workdir, exist_ok=True)
  points = grid(axes)
  # A list of [key, values] pairs: the axes' order fixes the grid's order and the run names.
  digest = config_hash(base_cfg)
  _check_same_config(workdir, digest)
  manifest = {"axes": [[k, v] for k, v in axes.items()], "config_hash": digest}
  _write_json_atomic(os.path.join(workdir, MANIFEST_FILE), manifest)
  _clean_leftovers(workdir)
  todo = [p for p in points if not os.path.exists(os.path.join(workdir, run_name(p)))]
  if len(todo) < len(points):
    log(f"sweep: {len(points) - len(todo)} of {len(points)} runs already finished in {workdir}")
  bar = tqdm.tqdm(total=len(points), initial=len(points) - len(todo), unit="run",
                  disable=not progress, desc="sweep")
  for overrides in todo:
    name = run_name(overrides)
    tmp_dir = os.path.join(workdir, f"{_TMP_PREFIX}{name}-{os.getpid()}")
    os.makedirs(tmp_dir)
    bar.set_postfix_str(name.rsplit("-", 1)[0])  # the run now going (its name less the hash)
    t0 = time.time()
    result = run_fn(apply_overrides(base_cfg, overrides), tmp_dir)
    record = {"overrides": overrides, "name": name, "result": result,
              "wall_s": round(time.time() - t0, 3)}
    _write_json_atomic(os.path.join(tmp_dir, RESULT_FILE), record)
    os.rename(tmp_dir, os.path.join(workdir, name))  # the commit point of the run
    bar.update(1)
  bar.close()
  return load_results(workdir, points)


def load_results(workdir, points=None):
  """Finished runs of a sweep directory (all of them, or those of `points`, in that order)."""
  if points is None:
    with open(os.path.join(workdir, MANIFEST_FILE)) as f:
      axes = json.load(f)["axes"]
    points = grid(dict(axes) if isinstance(axes, list) else axes)
  out = []
  for p in points:
    path = os.path.join(workdir, run_name(p), RESULT_FILE)
    if os.path.exists(path):
      with open(path) as f:
        out.append(json.load(f))
  return out
