r"""Measures engine steps and fits the cost_model clock's coefficients to them.

  python scripts/calibrate.py --config=configs/serve_default.py --workdir=runs/calibrate

Serves the config's workload with clock.mode=measured on the config's model (params_dir: the
bundled one by default, as scripts/serve.py), fits on 3 of every 4 steps, and prints the
median and p90 absolute error on the held-out steps plus the --config.clock.* overrides to use.
On a mesh and multi-process like scripts/serve.py; every process then takes the slowest
process's wall time for each step (parallel/spmd.py), which is what gets fitted.
"""
from absl import flags
from ml_collections import config_flags

from moe_serve import cli
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.metrics import writers
from moe_serve.parallel import distributed
from moe_serve.serving import calibrate, run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve_default.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_HOLDOUT = flags.DEFINE_integer("holdout_every", 4, "Hold out every n-th step.")


def main(argv):
  del argv
  distributed.initialize_from_flags()  # first: before anything touches the devices
  cfg = _CONFIG.value
  cfg.clock.mode = "measured"
  config_lib.validate_serve(loading.resolve(config_lib.validate_serve(config_lib.validate(cfg))))
  if _HOLDOUT.value < 2:
    raise config_lib.ConfigError(f"--holdout_every={_HOLDOUT.value} must be >= 2 (every n-th "
                                 "step is held out; the rest are fitted)")
  requests = run.make_requests(cfg)
  mesh = run.make_mesh(cfg)
  params, source = loading.load(cfg, mesh, log=distributed.process_log())  # serve.py's model
  engine = run.build_engine(cfg, params=params, mesh=mesh)
  _, log = run.serve(cfg, _WORKDIR.value, engine=engine, requests=requests,
                     params_source=source, log=distributed.process_log())
  if not distributed.is_logging_process():  # process 0 fits and writes (the steps agree)
    return
  result = calibrate.calibrate(log.steps, log.wall, _HOLDOUT.value)
  writers.write_json(f"{_WORKDIR.value}/calibration.json", result)
  print(f"fit on {result['fit_steps']} steps, held out {result['heldout_steps']} "
        f"(median step {result['heldout_step_s_median'] * 1e3:.2f} ms)")
  print(f"held-out |error|: median {result['heldout_abs_err_median_s'] * 1e3:.3f} ms "
        f"({result['heldout_rel_err_median']:.1%}), p90 {result['heldout_abs_err_p90_s'] * 1e3:.3f}"
        f" ms ({result['heldout_rel_err_p90']:.1%})")
  print("overrides:", calibrate.overrides(result))


if __name__ == "__main__":
  cli.run(main)
