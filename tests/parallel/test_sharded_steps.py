"""Sharded init and engine steps on 8 fake CPU devices match one device (contract 5).

The tiny config gets 8 experts here so that every mesh below is valid.

Tolerance: float32 logits agree to tests/tolerances.py's SHARDED_LOGITS_ATOL = 5e-5 absolute (logits
are O(1) here). They are not bitwise equal, even with dropless routing and fixed step shapes,
because sharding changes the arithmetic, not the routing: contractions split over `tensor` or
`expert` are summed across devices by an all-reduce in a different order, and each device runs its
matmuls on a slice of the rows, and XLA:CPU's float32 results for a row depend on the row count
(docs/design.md section 1). Measured max |delta logit| per mesh: 1.7e-6 to 6.0e-6
(benchmarks/sharded_agreement.py, docs/sharding.md); 5e-5 leaves room for other routings and XLA
versions. Routing is computed on the global token set whatever the mesh (GSPMD keeps global
semantics), so the scope/capacity decisions only change if such a rounding difference flips a near
tie.
The single-device mesh runs the same computation as the unsharded jit and is bitwise equal.
"""
import jax
import numpy as np
import pytest

from moe_serve import config as config_lib
from moe_serve.model import api, parts
from moe_serve.parallel import mesh as mesh_lib
from moe_serve.parallel import sharding, steps
from tests.parallel import step_driver
from tests.tolerances import SHARDED_LOGITS_ATOL

NEW_TOKENS = 6
MESHES = [(8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 1, 1)]


@pytest.fixture(scope="module")
def cfg():
  from configs import base  # pylint: disable=import-outside-toplevel
  c = base.get_config("size=tiny")
  c.model.num_experts = 8
  return c


@pytest.fixture(scope="module")
def reference(cfg):
  """Unsharded jits on one device: params, tokens, logits of the workload."""
  m = cfg.model
  params = jax.device_get(steps.make_init_fn(m)(0))
  prompts = step_driver.prompts(m.vocab_size)
  toks, logits = step_driver.run(steps.make_step_fn(m), params,
                                 api.init_cache(m, step_driver.SLOTS), prompts, NEW_TOKENS)
  return params, prompts, toks, logits


def _mesh(cfg, sizes):
  c = cfg.copy_and_resolve_references()
  c.mesh.update(data=sizes[0], expert=sizes[1], tensor=sizes[2])
  return mesh_lib.make_mesh(c.mesh, c.model, jax.devices()[:int(np.prod(sizes))])


_BUILT = {}


def _build(cfg, sizes, ref_params):
  """(mesh, params, step fn, cache fn) per mesh, built once: compiling dominates these tests.

  Parameters are the reference's, placed with the mesh's shardings (sharded init is checked
  separately, once, to save a compilation per mesh).
  """
  if sizes not in _BUILT:
    m, rules = cfg.model, cfg.logical_axis_rules
    mesh = _mesh(cfg, sizes)
    params = sharding.put(ref_params, sharding.param_shardings(m, mesh, rules))
    _BUILT[sizes] = (mesh, params, steps.make_step_fn(m, mesh, rules),
                     steps.make_cache_fn(m, mesh, rules))
  return _BUILT[sizes]


@pytest.mark.parametrize("sizes", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_workload_matches_one_device(cfg, reference, sizes):
  ref_params, prompts, ref_toks, ref_logits = reference
  _, params, step, make_cache = _build(cfg, sizes, ref_params)
  toks, logits = step_driver.run(step, params, make_cache(step_driver.SLOTS), prompts,
                                 NEW_TOKENS)
  np.testing.assert_array_equal(toks, ref_toks)
  if sizes == (1, 1, 1):
    np.testing.assert_array_equal(logits, ref_logits)
  else:
    np.testing.assert_allclose(logits, ref_logits, atol=SHARDED_LOGITS_ATOL, rtol=0)


@pytest.mark.parametrize("sizes", [(2, 2, 2), (1, 8, 1)], ids=lambda s: "x".join(map(str, s)))
def test_sharded_init_is_bitwise_the_unsharded_init(cfg, reference, sizes):
  """Partitionable threefry: every shard gets the bits it would have had unsharded."""
  mesh = _mesh(cfg, sizes)
  params = steps.make_init_fn(cfg.model, mesh, cfg.logical_axis_rules)(0)
  shardings = sharding.param_shardings(cfg.model, mesh, cfg.logical_axis_rules)
  for a, b, s in zip(jax.tree.leaves(params), jax.tree.leaves(reference[0]),
                     jax.tree.leaves(shardings)):
    assert a.sharding == s
    np.testing.assert_array_equal(np.asarray(a), b)


def test_forward_sharded_matches_one_device(cfg, reference):
  m, rules = cfg.model, cfg.logical_axis_rules
  ref_params = reference[0]
  toks = np.stack([p[:3] for p in reference[1]])
  want, _ = steps.make_forward_fn(m)(ref_params, toks)
  mesh, params, _, _ = _build(cfg, (2, 2, 2), reference[0])
  got, aux = steps.make_forward_fn(m, mesh, rules)(params, toks)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=SHARDED_LOGITS_ATOL, rtol=0)
  assert aux["expert_load"].shape == (m.num_layers, m.num_experts)


def test_cache_is_sharded_and_donated(cfg, reference):
  m = cfg.model
  _, params, step, make_cache = _build(cfg, (2, 2, 2), reference[0])
  cache = make_cache(step_driver.SLOTS)
  k = cache["layers"][0]["k"]
  assert k.sharding.spec == jax.sharding.PartitionSpec("data", "tensor", None, None)
  assert cache["lengths"].sharding.spec == jax.sharding.PartitionSpec("data")
  # each device holds 4 of the 8 slots and 1 of the 2 kv heads (keys [S, M, H, J])
  assert {s.data.shape for s in k.addressable_shards} == {(4, 1, m.head_dim, m.max_len)}
  v = cache["layers"][0]["v"]
  assert v.sharding.spec == jax.sharding.PartitionSpec("data", "tensor", None, None)
  assert {s.data.shape for s in v.addressable_shards} == {(4, 1, m.max_len, m.head_dim)}
  n = step_driver.SLOTS
  batch = parts.StepBatch(parts.decode_part(np.ones(n), np.arange(n), np.zeros(n), np.arange(n)),
                          parts.chunk_part(np.zeros((n, step_driver.CHUNK)), np.arange(n),
                                           np.zeros(n), np.zeros(n), -np.ones(n)))
  logits, new_cache, _ = step(params, cache, batch)
  assert k.is_deleted(), "the cache passed in should be donated"
  assert new_cache["layers"][0]["k"].sharding == k.sharding
  assert logits["decode"].sharding.is_fully_replicated


def test_indivisible_inputs_fail_early_with_numbers(cfg, reference):
  m = cfg.model
  mesh, params, step, make_cache = _build(cfg, (2, 2, 2), reference[0])
  with pytest.raises(config_lib.ConfigError, match=r"KV cache \['layers'\]\[0\]\['k'\] has shape "
                                                   r"\(3, 2, 8, 64\): dim 0 = 3 is not divisible "
                                                   r"by mesh axes \('data',\) of size 2"):
    make_cache(3)
  cache = make_cache(4)
  batch = parts.StepBatch(parts.decode_part(np.ones(3), np.arange(3), np.zeros(3), np.arange(3)),
                          parts.empty_part(0, 4))
  with pytest.raises(config_lib.ConfigError, match=r"step input .*dim 0 = 3 is not divisible.*"
                                                   r"pad the batch with idle rows"):
    step(params, cache, batch)
  with pytest.raises(config_lib.ConfigError, match="without rules"):
    steps.make_step_fn(m, mesh)
