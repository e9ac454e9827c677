"""Which part of a sweep one task runs: a sweep split over N tasks of a cluster scheduler (SLURM
job arrays, Kubernetes Indexed Jobs, one command per TPU VM, ...).

The rule is stable: setting i of the grid (in grid order) belongs to task `i % N`, so every
launch with the same N gives each task the same settings, whatever ran before. A multi-process
(SPMD) task is still one task: all its processes share its index.
"""
import collections
import os

from moe_serve import config as config_lib

Task = collections.namedtuple("Task", ["index", "count"])
ONE = Task(0, 1)  # the whole sweep in one task


def check(task):
  """`task` as a Task, or a ConfigError naming the bad value."""
  index, count = task
  if not isinstance(count, int) or count < 1:
    raise config_lib.ConfigError(f"--num_tasks={count!r}: must be a whole number >= 1")
  if not isinstance(index, int) or not 0 <= index < count:
    raise config_lib.ConfigError(f"--task_index={index!r}: must be in [0, {count}) for "
                                 f"--num_tasks={count}")
  return Task(index, count)


def assigned(num_points, task):
  """Indices of the grid points (of `num_points`) that `task` runs."""
  return [i for i in range(num_points) if i % task.count == task.index]


def _int(environ, name):
  text = environ.get(name)
  try:
    return int(text)
  except (TypeError, ValueError):
    raise config_lib.ConfigError(f"environment variable {name}={text!r} is not a whole number "
                                 "(pass --task_index and --num_tasks instead)") from None


def from_env(environ=None):
  """(index, count) from the scheduler's environment, or (None, None) when none is set.

  - SLURM job array: SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT (and SLURM_ARRAY_TASK_MIN and
    SLURM_ARRAY_TASK_STEP when set: `--array=1-8` or `--array=0-14:2` count from 0 too);
  - Kubernetes Indexed Job: JOB_COMPLETION_INDEX, and the job's completions in JOB_COMPLETIONS
    (Kubernetes does not export it: the Job spec sets it, docs/multihost.md).
  """
  environ = os.environ if environ is None else environ
  if environ.get("SLURM_ARRAY_TASK_ID") is not None:
    task_id, count = _int(environ, "SLURM_ARRAY_TASK_ID"), _int(environ, "SLURM_ARRAY_TASK_COUNT")
    low = _int(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ else 0
    step = _int(environ, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ else 1
    if step < 1 or (task_id - low) % step:
      raise config_lib.ConfigError(
          f"SLURM_ARRAY_TASK_ID={task_id} is not on the array's grid (min {low}, step {step})")
    return (task_id - low) // step, count
  if environ.get("JOB_COMPLETION_INDEX") is not None:
    if environ.get("JOB_COMPLETIONS") is None:
      raise config_lib.ConfigError(
          "JOB_COMPLETION_INDEX is set but JOB_COMPLETIONS is not: set it in the Job spec to the "
          "job's `completions` (docs/multihost.md), or pass --num_tasks")
    return _int(environ, "JOB_COMPLETION_INDEX"), _int(environ, "JOB_COMPLETIONS")
  return None, None


def resolve(index=None, count=None, environ=None):
  """The Task from the flags (None: not given), else the scheduler's environment, else the whole
  sweep in one task; checked."""
  env_index, env_count = from_env(environ)
  if (index is None) != (count is None) and env_index is None:
    raise config_lib.ConfigError("--task_index and --num_tasks go together (or neither: then "
                                 "the scheduler's environment, else one task)")
  index = env_index if index is None else index
  count = env_count if count is None else count
  return check(ONE if index is None else Task(index, count))
