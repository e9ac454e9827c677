r"""Trains (or resumes) a model; optionally exports it as a bundled model directory.

  python scripts/train.py --config=configs/train_default.py --workdir=/tmp/moe_train \
      --export_dir=models/default

Metrics: one JSON line per record in WORKDIR/metrics.jsonl (TensorBoard with
--config.train.tensorboard=True). Re-running the same command resumes from the last checkpoint.
"""
from absl import flags
from ml_collections import config_flags

from moe_serve import cli
from moe_serve import bundled
from moe_serve.training import trainer
from moe_serve.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/train_default.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and metrics go here.", required=True)
_EXPORT = flags.DEFINE_string("export_dir", None, "If set, write the final params here.")


def main(argv):
  del argv
  distributed.initialize_from_flags(multi_process=False)  # one process; see distributed.py
  cfg = _CONFIG.value
  state, summary = trainer.train(cfg, _WORKDIR.value, progress=True)
  print(f"done: {summary['steps']} steps in {summary['wall_s']:.0f} s (this process); "
        f"held-out NLL {summary['heldout_nll']}")
  if _EXPORT.value:
    bundled.export(_EXPORT.value, cfg, state["params"], summary["steps"])
    print(f"exported to {_EXPORT.value}")


if __name__ == "__main__":
  cli.run(main)
