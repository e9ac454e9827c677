"""The study behind scripts/sweep.py: check every setting, load the model once onto the config's
mesh, run the grid resumably, report.

Multi-process: every process runs every setting (the same steps in the same order); process 0
decides which runs are left (experiments/sweep.py), writes them and the report.
"""
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.experiments import determinism, report, sweep
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
  config_lib.validate_study(config_lib.validate(cfg))
  config_lib.validate_study(loading.resolve(cfg, log=lambda *_: None))  # params_dir's model
  mesh = serve_run.make_mesh(cfg)
  axes = axes_of(cfg)
  for point in sweep.grid(axes):
    run_cfg = sweep.apply_overrides(cfg, point)
    try:
      config_lib.validate_study(config_lib.validate(determinism.apply_capacity_factor(run_cfg)))
      config_lib.validate_serve_mesh(run_cfg, mesh.shape["data"])
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"sweep setting {point}: {e}") from None
  return axes, mesh


def run(cfg, workdir, progress=True, log=print):
  """Runs every unfinished grid point of the study in `workdir` on the config's mesh, then writes
  the report (process 0; the report text, or None on the other processes)."""
  axes, mesh = validate(cfg)
  params, source = loading.load(cfg, mesh, log=log)

  def one(run_cfg, run_dir):  # result.json, plus the files determinism.run writes
    result = determinism.run(run_cfg, params, log=log, mesh=mesh, out_dir=run_dir)
    result["params"] = source
    return result

  sweep.run_sweep(cfg, axes, workdir, one, progress=progress, log=log)
  return report.build(workdir, log=log) if distributed.is_logging_process() else None
