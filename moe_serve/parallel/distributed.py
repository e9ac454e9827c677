"""Multi-process start-up: `jax.distributed` from flags or from the environment.

Every script calls `distributed.initialize_from_flags()` first thing in `main` (before any other
jax call). Then:
- `--coordinator_address=host:port --num_processes=N --process_id=i`: explicit start (one process
  per host, or several on one machine as in the tests); on CPU the collectives go over gloo.
- `--distributed_auto`: `jax.distributed.initialize()` with no arguments, for clusters it detects
  itself (Cloud TPU pods, SLURM, Open MPI, GKE).
- neither: a single process, nothing to do.
Only process 0 writes logs and files (`is_logging_process`); every process runs the same program
on the same inputs, which is what a multi-controller jit expects (parallel/spmd.py keeps serving
runs in step and checks that they agreed; docs/multihost.md).
"""
from absl import flags
import jax

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_AUTO = flags.DEFINE_bool(
    "distributed_auto", False,
    "Initialise jax.distributed from the environment (TPU pod, SLURM, Open MPI, GKE).")


class DistributedError(ValueError):
  """The distributed flags are inconsistent."""


def initialize(coordinator_address=None, num_processes=None, process_id=None, auto=False):
  """Starts jax.distributed if asked to; returns True if this is a multi-process run."""
  if coordinator_address is None:
    if num_processes is not None or process_id is not None:
      raise DistributedError(
          f"num_processes={num_processes}, process_id={process_id} given without "
          "coordinator_address; pass --coordinator_address=host:port too")
    if auto:
      jax.distributed.initialize()
    return auto
  if num_processes is None or process_id is None:
    raise DistributedError(
        f"coordinator_address={coordinator_address!r} needs --num_processes and --process_id "
        f"(got num_processes={num_processes}, process_id={process_id})")
  if not 0 <= process_id < num_processes:
    raise DistributedError(f"process_id={process_id} is out of range for "
                           f"num_processes={num_processes}; use 0..{num_processes - 1}")
  # Cross-process collectives on CPU need an implementation (none by default); GPU/TPU ignore it.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  return True


def initialize_from_flags(multi_process=True):
  """`initialize` from the absl flags above (after absl has parsed them).

  Scripts whose work is not yet sharded across processes pass `multi_process=False`: asking them
  for several processes is then an error that says so, instead of a run that breaks later.
  """
  if not multi_process and (_AUTO.value or (_NUM_PROCESSES.value or 1) > 1):
    raise DistributedError(
        "this script runs in one process (it may still use every local device); multi-process "
        "runs are supported by scripts/serve.py, sweep.py, calibrate.py, eval_quality.py and "
        "generate.py. Drop --coordinator_address/--num_processes/--process_id/--distributed_auto")
  return initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _AUTO.value)


def is_logging_process():
  """True on process 0 only: the one process that writes logs, metrics and reports."""
  return jax.process_index() == 0


def process_log(log=print):
  """`log` on process 0, a no-op elsewhere."""
  return log if is_logging_process() else (lambda *args, **kwargs: None)
