"""The study behind scripts/sweep.py: check every setting, load the model once onto the config's
mesh, run the grid resumably, report.

Split over tasks (experiments/sweep_tasks.py): each task runs its settings; the task that finds
every setting finished when it ends (the last to finish) writes the report.

Multi-process: every process runs every setting of its task (the same steps in the same order);
process 0 decides which runs are left (experiments/sweep.py), writes them and the report.
"""
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.experiments import report, setting_runner, settings, sweep, sweep_tasks
from moe_serve.parallel import distributed
from moe_serve.serving import run as serve_run


def axes_of(cfg):
  """`sweep.axes` ((key, values), ...) as the dict experiments/sweep.py takes."""
  axes = {}
  for item in cfg.sweep.axes:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
      raise config_lib.ConfigError(f"sweep.axes item {item!r} must be a (dotted key, values) pair")
    key, values = item
    if not isinstance(values, (list, tuple)) or not values:
      raise config_lib.ConfigError(f"sweep.axes: {key!r} needs a non-empty list of values, "
                                   f"got {values!r}")
    if isinstance(key, (list, tuple)):  # a joint axis: value tuples of the same length
      key = tuple(key)
      if any(not isinstance(v, (list, tuple)) or len(v) != len(key) for v in values):
        raise config_lib.ConfigError(f"sweep.axes: joint axis {key!r} needs value tuples of "
                                     f"{len(key)}, got {values!r}")
      values = [tuple(v) for v in values]
    axes[key] = list(values)
  return axes


def validate(cfg):
  """Checks the study config, its mesh against the devices and every setting of its grid
  (ConfigError naming the setting), so no run starts before all of them are known to be valid.
  Returns (axes, mesh)."""
  loading.resolve_for(cfg, "sweep", log=lambda *_: None)  # params_dir's model
  mesh = serve_run.make_mesh(cfg)
  axes = axes_of(cfg)
  for point in sweep.grid(axes):
    run_cfg = sweep.apply_overrides(cfg, point)
    try:
      config_lib.validate_for(settings.study_config(run_cfg), "sweep")
      config_lib.validate_serve_mesh(run_cfg, mesh.shape["data"])
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"sweep setting {point}: {e}") from None
  return axes, mesh


def run(cfg, workdir, progress=True, log=print, task=sweep_tasks.ONE):
  """Runs every unfinished grid point of the study's `task` in `workdir` on the config's mesh,
  then, if every setting of the grid is finished, writes the report. Returns the report's text,
  or a line naming what is missing (process 0; None on the other processes)."""
  task = sweep_tasks.check(task)
  axes, mesh = validate(cfg)
  params, source = loading.load(cfg, mesh, log=log)

  def one(run_cfg, run_dir):  # result.json, plus the files setting_runner.run writes
    result = setting_runner.run(run_cfg, params, log=log, mesh=mesh, out_dir=run_dir)
    result["params"] = source
    return result

  sweep.run_sweep(cfg, axes, workdir, one, progress=progress, log=log, task=task)
  if not distributed.is_logging_process():
    return None
  # Checked after this task's last result is written: of two tasks ending at once, at least the
  # later check sees both, so the last to finish always writes the report.
  absent = sweep.missing(workdir, sweep.grid(axes))
  if absent:
    return (f"sweep task {task.index} of {task.count} done; {len(absent)} settings of "
            f"{workdir} are not finished (other tasks); the last task to finish writes the "
            f"report, or now: python scripts/report.py {workdir}")
  return report.build(workdir, log=log, tag=sweep.task_tag(task))
