"""How far sharded logits are from one device's, per mesh and routing (docs/sharding.md's table).

  PYTHONPATH=. python benchmarks/sharded_agreement.py

Runs the sharded tests' step driver (tests/parallel/step_driver.py: tiny model with 8 experts,
8 slots, chunked prefill + 6 greedy tokens) unsharded on one device, then on each mesh, and prints
whether greedy tokens are equal, whether logits are bitwise equal and the max |delta logit|. The
tests assert tests/tolerances.py's SHARDED_LOGITS_ATOL; this script measures the actual margin.
"""
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from configs import base  # pylint: disable=wrong-import-position
from moe_serve.model import api  # pylint: disable=wrong-import-position
from moe_serve.parallel import mesh as mesh_lib  # pylint: disable=wrong-import-position
from moe_serve.parallel import steps  # pylint: disable=wrong-import-position
from tests.parallel import step_driver  # pylint: disable=wrong-import-position

ROUTINGS = [("none", "einsum"), ("none", "ragged"), ("none", "gather"), ("batch", "gather"),
            ("batch", "einsum")]  # (capacity_scope, dispatch)
MESHES = [(8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 1, 1)]  # (data, expert, tensor)
NEW_TOKENS = 6


def main():
  cfg = base.get_config("size=tiny")
  m, rules = cfg.model, cfg.logical_axis_rules
  m.num_experts = 8
  for scope, dispatch in ROUTINGS:
    m.router.capacity_scope, m.router.dispatch = scope, dispatch
    params = jax.device_get(jax.jit(lambda: api.init_params(m, jax.random.key(0)))())
    prompts = step_driver.prompts(m.vocab_size)
    ref_toks, ref_logits = step_driver.run(steps.make_step_fn(m), params,
                                           api.init_cache(m, step_driver.SLOTS), prompts,
                                           NEW_TOKENS)
    for sizes in MESHES:
      cfg.mesh.update(data=sizes[0], expert=sizes[1], tensor=sizes[2])
      mesh = mesh_lib.make_mesh(cfg.mesh, m, jax.devices()[:int(np.prod(sizes))])
      toks, logits = step_driver.run(steps.make_step_fn(m, mesh, rules),
                                     steps.make_init_fn(m, mesh, rules)(0),
                                     steps.make_cache_fn(m, mesh, rules)(step_driver.SLOTS),
                                     prompts, NEW_TOKENS)
      print(scope, dispatch, sizes, "tokens equal", np.array_equal(toks, ref_toks),
            "bitwise", np.array_equal(logits, ref_logits),
            f"max|dlogit| {np.abs(logits - ref_logits).max():.2e}",
            f"max|logit| {np.abs(ref_logits).max():.2f}", flush=True)


if __name__ == "__main__":
  main()
