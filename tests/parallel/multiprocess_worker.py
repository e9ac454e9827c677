"""One process of the two-process test (test_multiprocess.py starts two of these).

  python -m tests.parallel.multiprocess_worker --coordinator_address=127.0.0.1:PORT \
      --num_processes=2 --process_id=I --out=DIR

Each process has 4 CPU devices (XLA_FLAGS set by the test); together they form one (2, 2, 2)
mesh, run the shared workload and process 0 alone writes the tokens and logits to DIR.
"""
import os

from absl import app
from absl import flags
import jax
import numpy as np

from configs import base
from moe_serve.parallel import distributed
from moe_serve.parallel import mesh as mesh_lib
from moe_serve.parallel import steps
from tests.parallel import step_driver

_OUT = flags.DEFINE_string("out", None, "Directory for process 0's results.")
NEW_TOKENS = 4


def config():
  """The config both the workers and the single-process reference use."""
  cfg = base.get_config("size=tiny")
  cfg.model.num_experts = 8
  cfg.mesh.update(data=2, expert=2, tensor=2)
  return cfg


def run_workload(cfg):
  m, rules = cfg.model, cfg.logical_axis_rules
  mesh = mesh_lib.make_mesh(cfg.mesh, m)
  params = steps.make_init_fn(m, mesh, rules)(0)
  cache = steps.make_cache_fn(m, mesh, rules)(step_driver.SLOTS)
  return step_driver.run(steps.make_step_fn(m, mesh, rules), params, cache,
                         step_driver.prompts(m.vocab_size), NEW_TOKENS)


def main(argv):
  del argv
  assert distributed.initialize_from_flags()
  log = distributed.process_log()
  log(f"processes {jax.process_count()}, devices {jax.device_count()} "
      f"({jax.local_device_count()} local)")
  toks, logits = run_workload(config())
  log(f"tokens {toks.tolist()}")
  if distributed.is_logging_process():
    np.savez(os.path.join(_OUT.value, "result.npz"), tokens=toks, logits=logits)


if __name__ == "__main__":
  app.run(main)
