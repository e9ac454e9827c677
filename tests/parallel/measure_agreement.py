"""Prints how far sharded logits are from one device's, per mesh and routing (docs/sharding.md).

  PYTHONPATH=. python tests/parallel/measure_agreement.py
"""
import os
os.environ["XLA_FLAGS"]="--xla_force_host_platform_device_count=8"
import jax, numpy as np
from configs import base
from moe_serve.model import api
from moe_serve.parallel import mesh as mesh_lib, steps
from tests.parallel import workload
cfg = base.get_config("size=tiny"); m=cfg.model; m.num_experts=8; R=cfg.logical_axis_rules
for scope, disp in [("none","einsum"),("none","ragged"),("none","gather"),("batch","gather"),("batch","einsum")]:
  m.router.capacity_scope=scope; m.router.dispatch=disp
  params = jax.device_get(jax.jit(lambda: api.init_params(m, jax.random.key(0)))())
  pr = workload.prompts(m.vocab_size)
  rt, rl = workload.run(steps.make_step_fn(m), params, api.init_cache(m, 8), pr, 6)
  for sizes in [(8,1,1),(1,8,1),(2,4,1),(2,2,2),(1,1,1)]:
    cfg.mesh.update(data=sizes[0], expert=sizes[1], tensor=sizes[2])
    mesh = mesh_lib.make_mesh(cfg.mesh, m, jax.devices()[:int(np.prod(sizes))])
    t, l = workload.run(steps.make_step_fn(m, mesh, R), steps.make_init_fn(m, mesh, R)(0), steps.make_cache_fn(m, mesh, R)(8), pr, 6)
    print(scope, disp, sizes, "tokens equal", np.array_equal(t, rt), "bitwise", np.array_equal(l, rl), "max|dlogit| %.2e" % np.abs(l - rl).max(), "max|logit| %.2f" % np.abs(rl).max(), flush=True)
