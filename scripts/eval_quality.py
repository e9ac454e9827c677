r"""Quality of a bundled model on the committed eval set, served through the serving engine.

  python scripts/eval_quality.py --model_dir=models/default --capacity_scope=none \
      --out=models/default/quality.json

Writes exact match per task domain and continuation NLL per text domain, for the whole eval set
and for the fixed subset (first --subset rows per domain) that tests/test_bundled.py checks.
The engine runs configs/serve_default.py with the bundled model in place of the base model.
"""
import json
import time

from absl import flags

from configs import serve_default
from moe_serve import bundled, cli, files
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.experiments import quality_runners
from moe_serve.parallel import distributed

_DIR = flags.DEFINE_string("model_dir", bundled.DEFAULT_DIR, "Model directory.")
_SCOPE = flags.DEFINE_enum("capacity_scope", "none", config_lib.CAPACITY_SCOPES,
                           "Router capacity scope when serving.")
_SUBSET = flags.DEFINE_integer("subset", 16, "Rows per domain of the fixed test subset.")
_OUT = flags.DEFINE_string("out", None, "Write the summary JSON here.")


def _summary(result):
  return {k: v for k, v in result.items() if k != "records"}


def main(argv):
  del argv
  distributed.initialize_from_flags(multi_process=False)  # one process; see distributed.py
  if _SUBSET.value < 1:
    raise config_lib.ConfigError(f"--subset={_SUBSET.value} must be >= 1")
  serve_cfg = serve_default.get_config()
  serve_cfg.params_dir = _DIR.value
  # The router as the model directory has it (trained or imported), at the chosen scope.
  serve_cfg.model.router = loading.directory_model_config(_DIR.value).router
  serve_cfg.model.router.capacity_scope = _SCOPE.value
  config_lib.validate_serve(loading.resolve(serve_cfg))
  params, _ = loading.load(serve_cfg)
  t0 = time.perf_counter()
  progress = cli.Progress()
  full = quality_runners.evaluate_served(serve_cfg, params, progress=progress)
  subset = quality_runners.evaluate_served(serve_cfg, params, per_domain=_SUBSET.value,
                                           progress=progress)
  out = {"capacity_scope": _SCOPE.value, "full": _summary(full),
         f"subset_{_SUBSET.value}": _summary(subset), "eval_s": time.perf_counter() - t0}
  print(json.dumps(out, indent=2, sort_keys=True))
  if _OUT.value:
    files.write_text_atomic(_OUT.value, json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
  cli.run(main)
