"""The study behind scripts/sweep.py: load the model once, run the grid resumably, report."""
import jax

from moe_serve import bundled
from moe_serve import config as config_lib
from moe_serve.experiments import determinism, report, sweep
from moe_serve.model import api


def load_params(cfg, log=print):
  """The parameters named by `cfg.params_dir` (a bundled model directory), or a random init.

  The directory's architecture must equal `cfg.model` (the router section may differ: routing
  is what studies vary).
  """
  if not cfg.params_dir:
    log(f"model: random init from seed {cfg.seed} (config params_dir is empty)")
    return api.init_params(cfg.model, jax.random.key(cfg.seed))
  saved_cfg, params = bundled.load(cfg.params_dir)
  arch = lambda m: {k: v for k, v in m.to_dict().items() if k != "router"}
  if arch(saved_cfg.model) != arch(cfg.model):
    diff = {k: (v, arch(cfg.model).get(k)) for k, v in arch(saved_cfg.model).items()
            if arch(cfg.model).get(k) != v}
    raise config_lib.ConfigError(f"model section differs from the model in {cfg.params_dir} "
                                 f"(saved, config): {diff}")
  log(f"model: {cfg.params_dir} (trained; see MODEL.md)")
  return params


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
  params = load_params(cfg, log)

  def one(run_cfg, run_dir):
    del run_dir  # everything a run produces is its result.json
    config_lib.validate(run_cfg)
    return determinism.run(run_cfg, params, log=log)

  sweep.run_sweep(cfg, axes_of(cfg), workdir, one, progress=progress, log=log)
  return report.build(workdir, log=log)
