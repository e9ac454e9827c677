r"""Runs a study grid resumably (one subdirectory per run) and writes its report.

  python scripts/sweep.py --config=configs/study_default.py --workdir=runs/study
  python scripts/sweep.py --config=configs/study_default.py --workdir=runs/study \
      --config.study.repeats=10 --config.study.load=60

Every setting of the grid is checked before the first run starts. Killed at any moment and started
again with the same workdir, it reruns only unfinished runs (and any whose result is unreadable).
Serves on `config.mesh` (e.g. `--config.mesh.expert=8` on 8 devices) and multi-process with one
command per process like scripts/serve.py (docs/multihost.md).
"""
from absl import flags
from ml_collections import config_flags

from moe_serve import cli
from moe_serve.experiments import study
from moe_serve.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/study_default.py", "Study config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/study", "Sweep directory (resumable).")


def main(argv):
  del argv
  distributed.initialize_from_flags()  # first: before anything touches the devices
  log = distributed.process_log()  # process 0 logs, writes the runs and the report
  log(study.run(_CONFIG.value, _WORKDIR.value, progress=distributed.is_logging_process(),
                log=log))


if __name__ == "__main__":
  cli.run(main)
