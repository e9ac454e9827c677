r"""Runs a study grid resumably (one subdirectory per run) and writes its report.

  python scripts/sweep.py --config=configs/study_default.py --workdir=runs/study
  python scripts/sweep.py --config=configs/study_default.py --workdir=runs/study \
      --config.study.repeats=10 --config.study.load=60
  python scripts/sweep.py --config=configs/study_default.py --workdir=gs://BUCKET/study \
      --task_index=3 --num_tasks=8        # one of 8 tasks (a cluster: docs/multihost.md)

Every setting of the grid is checked before the first run starts. Killed at any moment and started
again with the same workdir, it reruns only unfinished runs (and any whose result is unreadable).
Split over tasks, setting i runs in task i % num_tasks; the tasks may run at once on one workdir
(local or gs://), and the last to finish writes the report (else: scripts/report.py WORKDIR).
--task_index/--num_tasks default to the scheduler's: SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT,
or JOB_COMPLETION_INDEX/JOB_COMPLETIONS (Kubernetes Indexed Job), else one task.
Serves on `config.mesh` (e.g. `--config.mesh.expert=8` on 8 devices) and multi-process with one
command per process like scripts/serve.py (docs/multihost.md): such a task stays one task.
"""
from absl import flags
from ml_collections import config_flags

from moe_serve import cli
from moe_serve.experiments import study, sweep_tasks
from moe_serve.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/study_default.py", "Study config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/study", "Sweep directory (resumable; gs:// too).")
_TASK_INDEX = flags.DEFINE_integer("task_index", None, "This task's index in [0, num_tasks) "
                                   "(default: the scheduler's environment, else 0).")
_NUM_TASKS = flags.DEFINE_integer("num_tasks", None, "Tasks the sweep is split over (default: "
                                  "the scheduler's environment, else 1).")


def main(argv):
  del argv
  task = sweep_tasks.resolve(_TASK_INDEX.value, _NUM_TASKS.value)  # before any device work
  distributed.initialize_from_flags()  # first device work: before anything touches the devices
  log = distributed.process_log()  # process 0 logs, writes the runs and the report
  log(study.run(_CONFIG.value, _WORKDIR.value, progress=distributed.is_logging_process(),
                log=log, task=task))


if __name__ == "__main__":
  cli.run(main)
