r"""Quality of a bundled model on the committed eval set, served through the serving engine.

  python scripts/eval_quality.py --model_dir=models/default --capacity_scope=none \
      --out=models/default/quality.json

Writes exact match per task domain and continuation NLL per text domain, for the whole eval set
and for the fixed subset (first --subset rows per domain) that tests/test_bundled.py checks.
The engine runs --config (configs/serve_default.py) with the model directory's model in place of
the config's, on the config's mesh, e.g. `--config.mesh.expert=8` on 8 devices, and multi-process
like scripts/serve.py (process 0 prints and writes; docs/multihost.md).
"""
import json
import time

from absl import flags
from ml_collections import config_flags

from moe_serve import bundled, cli, files
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.experiments import quality_runners
from moe_serve.parallel import distributed, spmd
from moe_serve.serving import run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve_default.py",
                                          "Serving config (engine, mesh).")

_DIR = flags.DEFINE_string("model_dir", bundled.DEFAULT_DIR, "Model directory.")
_SCOPE = flags.DEFINE_enum("capacity_scope", "none", config_lib.CAPACITY_SCOPES,
                           "Router capacity scope when serving.")
_SUBSET = flags.DEFINE_integer("subset", 16, "Rows per domain of the fixed test subset.")
_OUT = flags.DEFINE_string("out", None, "Write the summary JSON here.")


def _summary(result):
  return {k: v for k, v in result.items() if k != "records"}


def main(argv):
  del argv
  distributed.initialize_from_flags()  # first: before anything touches the devices
  if _SUBSET.value < 1:
    raise config_lib.ConfigError(f"--subset={_SUBSET.value} must be >= 1")
  serve_cfg = _CONFIG.value
  serve_cfg.params_dir = _DIR.value
  serve_cfg.model.router.capacity_scope = _SCOPE.value
  loading.resolve_for(serve_cfg, "eval", log=distributed.process_log())
  # The whole router as the model directory has it (trained or imported), at the chosen scope.
  router = loading.directory_model_config(_DIR.value).router
  router.capacity_scope = _SCOPE.value
  serve_cfg.model.router = router
  config_lib.validate_for(serve_cfg, "eval")
  mesh = run.make_mesh(serve_cfg)  # ConfigError if it does not fit the devices
  params, _ = loading.load(serve_cfg, mesh, log=distributed.process_log())
  t0 = time.perf_counter()
  progress = cli.Progress(disable=not distributed.is_logging_process())
  full = quality_runners.evaluate_served(serve_cfg, params, progress=progress, mesh=mesh)
  subset = quality_runners.evaluate_served(serve_cfg, params, per_domain=_SUBSET.value,
                                           progress=progress, mesh=mesh)
  spmd.check_same(spmd.Digest().add(full["records"] + subset["records"]).hexdigest(),
                  "eval records")
  if not distributed.is_logging_process():
    return
  out = {"capacity_scope": _SCOPE.value, "full": _summary(full),
         f"subset_{_SUBSET.value}": _summary(subset), "eval_s": time.perf_counter() - t0}
  print(json.dumps(out, indent=2, sort_keys=True))
  if _OUT.value:
    files.write_text_atomic(_OUT.value, json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
  cli.run(main)
