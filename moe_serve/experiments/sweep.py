"""A resumable grid of config overrides: one subdirectory per run, each finished exactly once,
split over any number of tasks that may run at once on one workdir (local or `gs://`).

A run writes into its own directory `WORKDIR/NAME` and is finished once its `result.json` exists:
that file is written last and atomically (files.py: a rename locally, one whole object on an
object store), so it is never half there. A sweep killed at any moment and started again reruns
only what had not finished (its directory cleared first), never a finished run.

Tasks (experiments/sweep_tasks.py): setting i belongs to task `i % num_tasks`, so each run
directory has one writer; the shared manifest (`sweep.json`, the grid and the config's hash) is
written only when missing or changed, the same bytes by every task. A task's temporary files carry
its tag (`.tmptaskI`) and only that task removes them, so no task deletes a file another task is
writing. The whole sweep in one task (the default) also removes older leftovers (`NAME.tmpPID`,
`.tmp-*`).

Multi-process: only process 0 reads and writes the directory; it decides which of its task's runs
are left and every process runs those (parallel/spmd.py broadcasts the list), so all take the
same steps.
"""
import hashlib
import itertools
import json
import re
import time

import tqdm

from moe_serve import config as config_lib
from moe_serve import files
from moe_serve import provenance
from moe_serve.experiments import sweep_tasks
from moe_serve.parallel import distributed, spmd

RESULT_FILE = "result.json"
MANIFEST_FILE = "sweep.json"
_TMP_PREFIX = ".tmp-"  # run directories of older versions (renamed into place when finished)


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
  path = files.join(workdir, MANIFEST_FILE)
  if not files.exists(path):
    return None
  try:
    manifest = json.loads(files.read_text(path))
    if not isinstance(manifest, dict) or "axes" not in manifest:
      raise ValueError("it has no `axes`")
    return manifest
  except (ValueError, UnicodeDecodeError) as e:
    raise config_lib.ConfigError(
        f"sweep manifest {path} is unreadable ({e}); if this directory holds this sweep's "
        f"runs, delete {path} and run the same command again (finished runs are kept), else "
        "use a new --workdir") from None


def _check_same_config(old, digest, workdir):
  old = (old or {}).get("config_hash")
  if old is not None and old != digest:
    raise config_lib.ConfigError(
        f"{workdir} holds runs of another config (hash {old}, this one {digest}); resuming "
        "would mix results: use a new --workdir (or delete this one)")


def read_result(run_dir):
  """A finished run's record, or None if its result.json is missing or unreadable."""
  try:
    record = json.loads(files.read_text(files.join(run_dir, RESULT_FILE)))
    return record if isinstance(record, dict) and "result" in record else None
  except (OSError, ValueError):
    return None


def task_tag(task):
  """The tag of `task`'s temporary files (files.atomic_open's `NAME.tmpTAG`)."""
  return f"task{task.index}"


def _clean_leftovers(workdir, task):
  """Removes temporaries a killed writer left: `NAME.tmptaskI` of this task (a kill during a
  write, e.g. of the manifest or the report); with the whole sweep in one task, also any
  `NAME.tmpPID` and `.tmp-*` (older versions), as no other writer can be at work then."""
  if not files.is_local(workdir):  # an object store writes whole objects: no temporaries
    return
  mine = re.compile(rf".+\.tmp{task_tag(task)}")
  for name in files.listdir(workdir):
    path = files.join(workdir, name)
    if mine.fullmatch(name) or (task.count == 1 and (
        name.startswith(_TMP_PREFIX) or re.fullmatch(r".+\.tmp(\d+|task\d+)", name))):
      files.remove(path)


def run_sweep(base_cfg, axes, workdir, run_fn, progress=True, log=print, task=sweep_tasks.ONE):
  """Runs `run_fn(cfg, run_dir) -> dict` for every grid point of `task` not yet finished.

  Returns the list of `{"overrides", "name", "result", ...}` of every finished grid point (all
  tasks'), in grid order (on processes other than 0: this task's runs just made).
  """
  task = sweep_tasks.check(task)
  points = grid(axes)
  write = distributed.is_logging_process()
  todo = _prepare(base_cfg, axes, workdir, points, log, task) if write else None
  todo = [points[i] for i in spmd.broadcast_json(todo)]  # process 0's list, on every process
  if not write:
    progress, results = False, []
  mine = len(sweep_tasks.assigned(len(points), task))
  bar = tqdm.tqdm(total=mine, initial=mine - len(todo), unit="run", disable=not progress,
                  desc="sweep" if task.count == 1 else f"sweep task {task.index}/{task.count}")
  for overrides in todo:
    name = run_name(overrides)
    if not write:  # another process: the same run, nothing written
      results.append({"overrides": overrides, "name": name,
                      "result": run_fn(apply_overrides(base_cfg, overrides), None)})
      continue
    run_dir = files.join(workdir, name)
    files.makedirs(run_dir)
    bar.set_postfix_str(name.rsplit("-", 1)[0])  # the run now going (its name less the hash)
    t0 = time.time()
    run_cfg = apply_overrides(base_cfg, overrides)
    stamp = provenance.provenance(run_cfg)  # when it started, on what, from which commit
    result = run_fn(run_cfg, run_dir)
    record = {"overrides": overrides, "name": name, "result": result,
              "wall_s": round(time.time() - t0, 3), "provenance": stamp}
    files.write_text_atomic(files.join(run_dir, RESULT_FILE),  # the commit point of the run
                            json.dumps(record, indent=1, sort_keys=True), tag=task_tag(task))
    bar.update(1)
  bar.close()
  return load_results(workdir, points) if write else results


def _prepare(base_cfg, axes, workdir, points, log, task):
  """Process 0: checks and writes the manifest, cleans this task's leftovers and its unfinished
  runs' directories; returns the indices in `points` of this task's runs not yet finished."""
  files.makedirs(workdir)
  # A list of [key, values] pairs: the axes' order fixes the grid's order and the run names.
  digest = config_hash(base_cfg)
  old = _read_manifest(workdir)
  _check_same_config(old, digest, workdir)
  manifest = {"axes": [[k, v] for k, v in axes.items()], "config_hash": digest}
  if old is None or json.dumps(old, sort_keys=True) != json.dumps(
      json.loads(json.dumps(manifest)), sort_keys=True):  # tuples as lists, as read back
    files.write_text_atomic(files.join(workdir, MANIFEST_FILE),
                            json.dumps(manifest, indent=1, sort_keys=True), tag=task_tag(task))
  _clean_leftovers(workdir, task)
  mine = sweep_tasks.assigned(len(points), task)
  todo = []
  for i in mine:
    run_dir = files.join(workdir, run_name(points[i]))
    if read_result(run_dir) is not None:
      continue
    if files.exists(run_dir):  # a killed attempt's files: this task is their only writer
      log(f"sweep: {run_name(points[i])} has no readable {RESULT_FILE}; running it again")
      files.remove(run_dir)
    todo.append(i)
  of = "" if task.count == 1 else f" (task {task.index} of {task.count}: {len(mine)} of them)"
  if len(todo) < len(mine):
    log(f"sweep: {len(mine) - len(todo)} of {len(points)} runs{of} already finished in "
        f"{workdir}")
  elif task.count > 1:
    log(f"sweep: {len(points)} runs{of} in {workdir}")
  return todo


def points_of(workdir):
  """The grid points of the sweep in `workdir` (from its manifest), in grid order."""
  manifest = _read_manifest(workdir)
  if manifest is None:
    raise config_lib.ConfigError(f"{workdir} is not a sweep directory ({MANIFEST_FILE} is "
                                 "missing)")
  axes = manifest["axes"]
  return grid({tuple(k) if isinstance(k, list) else k: v for k, v in axes}
              if isinstance(axes, list) else axes)


def missing(workdir, points=None):
  """Names of the grid points (all of the manifest's, or `points`) without a finished run."""
  points = points_of(workdir) if points is None else points
  names = [run_name(p) for p in points]
  return [n for n in names if read_result(files.join(workdir, n)) is None]


def load_results(workdir, points=None):
  """Finished runs of a sweep directory (all of them, or those of `points`, in that order)."""
  points = points_of(workdir) if points is None else points
  records = (read_result(files.join(workdir, run_name(p))) for p in points)
  return [r for r in records if r is not None]
