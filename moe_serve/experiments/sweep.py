"""A resumable grid of config overrides: one subdirectory per run, each finished exactly once.

A run writes into a private temporary directory and becomes visible only by an atomic rename to
its final name, after its `result.json` is complete. So a sweep killed at any moment and started
again reruns only what had not finished, never a finished run, and leaves no truncated file in any
run directory. Leftover temporary directories of killed runs are removed on restart.

Multi-process: only process 0 reads and writes the directory; it decides which runs are left and
every process runs those (parallel/spmd.py broadcasts the list), so all take the same steps.
"""
import hashlib
import itertools
import json
import os
import re
import shutil
import time

import tqdm

from moe_serve import config as config_lib
from moe_serve import files
from moe_serve import provenance
from moe_serve.parallel import distributed, spmd

RESULT_FILE = "result.json"
MANIFEST_FILE = "sweep.json"
_TMP_PREFIX = ".tmp-"


def grid(axes):
  """Cartesian product of `{dotted.key: [values]}` in a stable order (first key varies slowest).

  A joint axis `{(key, key, ...): [(value, value, ...), ...]}` sets its keys together: its points
  are its value tuples (e.g. the settings of a study that are not a full grid).
  """
  keys = list(axes)
  for key in keys:
    if not isinstance(axes[key], (list, tuple)) or not axes[key]:
      raise ValueError(f"sweep axis {key!r} must be a non-empty list, got {axes[key]!r}")
    if isinstance(key, tuple) and any(not isinstance(v, (list, tuple)) or len(v) != len(key)
                                      for v in axes[key]):
      raise ValueError(f"joint sweep axis {key!r}: every value must be a tuple of {len(key)}, "
                       f"got {axes[key]!r}")
  points = []
  for values in itertools.product(*(axes[k] for k in keys)):
    point = {}
    for key, value in zip(keys, values):
      point.update(zip(key, value) if isinstance(key, tuple) else [(key, value)])
    points.append(point)
  return points


def run_name(overrides):
  """A readable, filesystem-safe, unique name for one grid point."""
  text = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items())
  safe = "".join(c if c.isalnum() or c in "=,._-" else "_" for c in text)[:120]
  digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
  return f"{safe}-{digest}" if safe else digest


def apply_overrides(cfg, overrides):
  """Returns a copy of `cfg` with dotted-key overrides applied; an unknown key is a ConfigError
  naming the nearest valid names."""
  cfg = cfg.copy_and_resolve_references()
  for key, value in overrides.items():
    message = config_lib.unknown_field(cfg, key)
    if message:
      raise config_lib.ConfigError(f"sweep override: {message}")
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def config_hash(cfg):
  """A short hash of everything in `cfg` but its `sweep` section (what the runs share)."""
  return provenance.config_hash(cfg, exclude=("sweep",))


def _read_manifest(workdir):
  """The manifest of an existing sweep directory (None if there is none yet)."""
  path = os.path.join(workdir, MANIFEST_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
    if not isinstance(manifest, dict) or "axes" not in manifest:
      raise ValueError("it has no `axes`")
    return manifest
  except (ValueError, UnicodeDecodeError) as e:
    raise config_lib.ConfigError(
        f"sweep manifest {path} is unreadable ({e}); if this directory holds this sweep's "
        f"runs, delete {path} and run the same command again (finished runs are kept), else "
        "use a new --workdir") from None


def _check_same_config(workdir, digest):
  old = (_read_manifest(workdir) or {}).get("config_hash")
  if old is not None and old != digest:
    raise config_lib.ConfigError(
        f"{workdir} holds runs of another config (hash {old}, this one {digest}); resuming "
        "would mix results: use a new --workdir (or delete this one)")


def read_result(run_dir):
  """A finished run's record, or None if its result.json is missing or unreadable."""
  try:
    with open(os.path.join(run_dir, RESULT_FILE), encoding="utf-8") as f:
      record = json.load(f)
    return record if isinstance(record, dict) and "result" in record else None
  except (OSError, ValueError):
    return None


def _finished(workdir, name, log):
  """Whether run `name` is finished; a run directory without a readable result is moved aside
  (to be rerun), and said so."""
  run_dir = os.path.join(workdir, name)
  if not os.path.exists(run_dir):
    return False
  if read_result(run_dir) is not None:
    return True
  aside = os.path.join(workdir, f"{_TMP_PREFIX}broken-{name}-{os.getpid()}")
  os.rename(run_dir, aside)
  shutil.rmtree(aside, ignore_errors=True)
  log(f"sweep: {name} has no readable {RESULT_FILE}; running it again")
  return False


def _clean_leftovers(workdir):
  """Removes unfinished runs' directories and files.atomic_open's temporaries (`NAME.tmpPID`,
  left by a kill during a write, e.g. of the manifest): neither is ever a complete result."""
  for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    if name.startswith(_TMP_PREFIX):
      shutil.rmtree(path, ignore_errors=True)
    elif re.fullmatch(r".+\.tmp\d+", name) and os.path.isfile(path):
      os.remove(path)


def run_sweep(base_cfg, axes, workdir, run_fn, progress=True, log=print):
  """Runs `run_fn(cfg, run_dir) -> dict` for every grid point not yet finished.

  Returns the list of `{"overrides", "name", "result"}` for all grid points, in grid order.
  """
  points = grid(axes)
  write = distributed.is_logging_process()
  todo = _prepare(base_cfg, axes, workdir, points, log) if write else None
  todo = [points[i] for i in spmd.broadcast_json(todo)]  # process 0's list, on every process
  if not write:
    progress, results = False, []
  bar = tqdm.tqdm(total=len(points), initial=len(points) - len(todo), unit="run",
                  disable=not progress, desc="sweep")
  for overrides in todo:
    name = run_name(overrides)
    tmp_dir = os.path.join(workdir, f"{_TMP_PREFIX}{name}-{os.getpid()}")
    if not write:  # another process: the same run, nothing written
      results.append({"overrides": overrides, "name": name,
                      "result": run_fn(apply_overrides(base_cfg, overrides), None)})
      continue
    os.makedirs(tmp_dir)
    bar.set_postfix_str(name.rsplit("-", 1)[0])  # the run now going (its name less the hash)
    t0 = time.time()
    run_cfg = apply_overrides(base_cfg, overrides)
    stamp = provenance.provenance(run_cfg)  # when it started, on what, from which commit
    result = run_fn(run_cfg, tmp_dir)
    record = {"overrides": overrides, "name": name, "result": result,
              "wall_s": round(time.time() - t0, 3), "provenance": stamp}
    files.write_text_atomic(os.path.join(tmp_dir, RESULT_FILE),
                            json.dumps(record, indent=1, sort_keys=True))
    os.rename(tmp_dir, os.path.join(workdir, name))  # the commit point of the run
    bar.update(1)
  bar.close()
  return load_results(workdir, points) if write else results


def _prepare(base_cfg, axes, workdir, points, log):
  """Process 0: checks and writes the manifest, cleans leftovers; returns the indices in `points`
  of the runs not yet finished."""
  os.makedirs(workdir, exist_ok=True)
  # A list of [key, values] pairs: the axes' order fixes the grid's order and the run names.
  digest = config_hash(base_cfg)
  _check_same_config(workdir, digest)
  manifest = {"axes": [[k, v] for k, v in axes.items()], "config_hash": digest}
  files.write_text_atomic(os.path.join(workdir, MANIFEST_FILE),
                          json.dumps(manifest, indent=1, sort_keys=True))
  _clean_leftovers(workdir)
  todo = [i for i, p in enumerate(points) if not _finished(workdir, run_name(p), log)]
  if len(todo) < len(points):
    log(f"sweep: {len(points) - len(todo)} of {len(points)} runs already finished in {workdir}")
  return todo


def load_results(workdir, points=None):
  """Finished runs of a sweep directory (all of them, or those of `points`, in that order)."""
  if points is None:
    manifest = _read_manifest(workdir)
    if manifest is None:
      raise config_lib.ConfigError(f"{workdir} is not a sweep directory ({MANIFEST_FILE} is "
                                   "missing)")
    axes = manifest["axes"]
    points = grid({tuple(k) if isinstance(k, list) else k: v for k, v in axes}
                  if isinstance(axes, list) else axes)
  records = (read_result(os.path.join(workdir, run_name(p))) for p in points)
  return [r for r in records if r is not None]
