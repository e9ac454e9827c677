"""What scripts/serve.py does on a mesh (run.make_mesh, loading.load, build_engine, run.serve)
serves the same workload to the same completions on (1, 8, 1), (2, 4, 1) and (2, 2, 2) meshes of
the 8 fake CPU devices as on one device, and its summary's per-device bytes add up.

Tolerance: tokens and the schedule (steps.jsonl records) must match exactly; logprobs agree to
1e-4 (sharded matmuls reduce in another order, float32; the tiny model's logits are O(1); measured
differences are ~1e-6, docs/sharding.md).
"""
import jax
import numpy as np
import pytest

from moe_serve import loading
from moe_serve.experiments import quality_runners
from moe_serve.parallel import memory, sharding
from moe_serve.serving import run as run_lib
from tests.helpers.serving import tiny_serve_cfg

MESHES = [(1, 8, 1), (2, 4, 1), (2, 2, 2)]


def _cfg(data, expert, tensor):
  cfg = tiny_serve_cfg(ignore_eos=True)
  cfg.model.num_experts = 8  # divisible by every mesh's expert axis
  cfg.serve.buckets.update(decode_rows=(8,), prefill_rows=(2,), chunk_lens=(8,))
  cfg.workload.update(num_requests=6)
  cfg.mesh.update(data=data, expert=expert, tensor=tensor)
  # Split experts run other expert kernels (grouped buffers sent by all-to-all) and the clock
  # prices that (step_cost.py); unpriced here, so the schedules of every mesh can be compared.
  cfg.clock.coef.update(expert_rows=0.0, a2a_rows=0.0)
  return cfg


def _serve(cfg, workdir, params=None):
  """scripts/serve.py's sequence: (mesh, engine, summary, RunLog). Given `params` (one device's)
  are placed on the mesh instead of loaded again (loading onto meshes: tests/test_loading.py)."""
  mesh = run_lib.make_mesh(cfg)
  if params is None:
    params, _ = loading.load(cfg, mesh, log=lambda *_: None)
  else:
    params = jax.device_put(params, sharding.plan(cfg.model, mesh, cfg.logical_axis_rules).params)
  source = loading.source(cfg)
  engine = run_lib.build_engine(cfg, params=params, mesh=mesh)
  summary, log = run_lib.serve(cfg, str(workdir), engine=engine, log=lambda *_: None,
                               params_source=source)
  return mesh, engine, summary, log


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  return _serve(_cfg(1, 1, 1), tmp_path_factory.mktemp("one"))


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_serve_on_a_mesh_matches_one_device(one_device, shape, tmp_path):
  _, ref_engine, ref_summary, ref = one_device
  cfg = _cfg(*shape)
  mesh, engine, summary, got = _serve(cfg, tmp_path, ref_engine.params)
  assert dict(mesh.shape) == dict(zip(("data", "expert", "tensor"), shape))
  assert jax.tree.leaves(engine.params)[0].sharding.mesh.size == 8
  without_cost = lambda steps: [{k: v for k, v in s.items() if k != "cost"} for s in steps]
  assert without_cost(got.steps) == without_cost(ref.steps)  # same schedule, tokens and clock
  assert all((s["cost"]["a2a_rows"] > 0) == (shape[1] > 1) for s in got.steps)
  for one, sharded in zip(ref.requests, got.requests):
    assert one["tokens"] == sharded["tokens"], one["id"]
    np.testing.assert_allclose(one["logprobs"], sharded["logprobs"], atol=1e-4, rtol=0)

  # Per-device bytes from the live shards equal the plan's arithmetic, and add up by hand.
  mem, ref_mem = summary["memory"], ref_summary["memory"]
  plan = memory.planned(cfg.model, dict(mesh.shape), cfg.logical_axis_rules,
                        cfg.serve.max_num_seqs)
  for key in ("params_bytes", "cache_bytes", "params_bytes_per_device", "cache_bytes_per_device"):
    assert mem[key] == plan[key], key
  assert mem["params_bytes_per_device"] == mem["params_bytes_per_device_min"]
  assert (mem["params_bytes"], mem["cache_bytes"]) == (ref_mem["params_bytes"],
                                                       ref_mem["cache_bytes"])
  assert ref_mem["params_bytes_per_device"] == ref_mem["params_bytes"]  # one device holds all
  data, expert, tensor = shape
  experts = sum(x.nbytes for path, x in jax.tree_util.tree_leaves_with_path(ref_engine.params)
                if "experts" in jax.tree_util.keystr(path))
  lengths = ref_engine.cache["lengths"].nbytes
  if tensor == 1:  # only the expert weights are split (over `expert`), the cache over `data`
    assert mem["params_bytes_per_device"] == mem["params_bytes"] - experts + experts // expert
  assert mem["cache_bytes_per_device"] == ((mem["cache_bytes"] - lengths) // (data * tensor)
                                           + lengths // data)
  if shape == (2, 2, 2):  # eval_quality.py's scorer on the mesh (once: it compiles a step)
    runner = quality_runners.EngineRunner(cfg, engine.params, engine=engine, mesh=mesh)
    req = run_lib.make_requests(cfg)[0]
    rec = got.requests[0]
    assert rec["id"] == req.id
    lp = runner.score([req.prompt], [rec["tokens"]])[0]
    np.testing.assert_allclose(lp, rec["logprobs"], atol=1e-4, rtol=0)  # prefill vs decode
