"""The study behind scripts/sweep.py: load the model once, run the grid resumably, report."""
from moe_serve import bundled
from moe_serve import config as config_lib
from moe_serve.experiments import determinism, report, sweep


def axes_of(cfg):
  """`sweep.axes` ((key, values), ...) as the dict experiments/sweep.py takes."""
  axes = {}
  for item in cfg.sweep.axes:
    key, values = item
    axes[key] = list(values)
  return axes


def run(cfg, workdir, progress=True, log=print):
  """Runs every unfinished grid point of the study in `workdir`, then writes the report."""
  config_lib.validate(cfg)
  config_lib.validate_study(cfg)
  params = bundled.params_for(cfg, log)

  def one(run_cfg, run_dir):
    del run_dir  # everything a run produces is its result.json
    config_lib.validate(run_cfg)
    config_lib.validate_study(run_cfg)
    return determinism.run(run_cfg, params, log=log)

  sweep.run_sweep(cfg, axes_of(cfg), workdir, one, progress=progress, log=log)
  return report.build(workdir, log=log)
