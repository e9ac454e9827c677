"""The engine is agnostic to the step: on a (data 2, expert 2, tensor 2) mesh of the 8 fake CPU
devices it serves the same workload to the same completions as on one device.

Tolerance: tokens must match; logprobs agree to 1e-4 (sharded matmuls reduce in another order,
float32; the tiny model's logits are O(1)).
"""
import jax
import numpy as np

from moe_serve.parallel import mesh as mesh_lib
from moe_serve.serving import run as run_lib
from tests.serving.conftest import tiny_serve_cfg


def test_sharded_engine_matches_single_device(tiny_model):
  cfg = tiny_serve_cfg(ignore_eos=True)
  cfg.serve.buckets.update(decode_rows=(8,), prefill_rows=(2,), chunk_lens=(8,))
  cfg.workload.update(num_requests=10)
  cfg.mesh.update(data=2, expert=2, tensor=2)
  requests = run_lib.make_requests(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh, cfg.model, jax.devices()[:8])
  step_fn, params = tiny_model  # the single-device engine reuses the shared, compiled step
  engines = [run_lib.build_engine(cfg, step_fn, params), run_lib.build_engine(cfg, mesh=mesh)]
  logs = [e.run(requests).requests for e in engines]
  for one, sharded in zip(*logs):
    assert one["tokens"] == sharded["tokens"], one["id"]
    np.testing.assert_allclose(one["logprobs"], sharded["logprobs"], atol=1e-4, rtol=0)
