"""Expert parallelism in the real sharded step: tokens reach their experts by all-to-all.

With the `exp` axis split over the mesh, `dispatch.run` takes the grouped path
(model/dispatch_grouped.py): token groups [G, S, D] over data x expert fill their [G, E, C, D]
buffers locally, the buffers are re-laid out as [E, G, C, D] (experts on `expert`), an all-to-all,
and back. The tests run the shared workload with capacity (`batch` scope, drops happen) on meshes
with expert > 1, check greedy tokens and logits against one device (tests/tolerances.py's
SHARDED_LOGITS_ATOL, as in test_sharded_steps.py: 5e-5 in float32; docs/sharding.md measures at most
5.5e-6 for these routings), compare the recorded routing, then read the compiled step's HLO (the
compilation the run already did: lowering the same shapes again hits jit's cache).
"""
import jax
import numpy as np
import pytest

from configs import base
from moe_serve.model import api, parts
from moe_serve.parallel import hlo
from moe_serve.parallel import mesh as mesh_lib
from moe_serve.parallel import sharding, steps
from tests.parallel import step_driver
from tests.tolerances import SHARDED_LOGITS_ATOL

NEW_TOKENS = 4
CASES = [((1, 8, 1), "einsum"), ((2, 4, 1), "gather"), ((2, 2, 2), "einsum")]


def _cfg(dispatch):
  c = base.get_config("size=tiny")
  c.model.num_experts = 8
  c.model.router.update(capacity_scope="batch", capacity_factor_prefill=1.0,
                        capacity_factor_decode=1.0, dispatch=dispatch)
  return c


@pytest.fixture(scope="module")
def reference():
  """One device, flat gather dispatch: params, prompts, tokens, logits, aux of every step."""
  m = _cfg("gather").model
  params = jax.device_get(steps.make_init_fn(m)(0))
  prompts = step_driver.prompts(m.vocab_size)
  step, auxes = _recording(steps.make_step_fn(m, record_routing=True))
  toks, logits = step_driver.run(step, params, api.init_cache(m, step_driver.SLOTS), prompts,
                                 NEW_TOKENS)
  return params, prompts, toks, logits, auxes


def _recording(step_fn):
  """A step that also keeps every step's aux (host copies)."""
  auxes = []

  def step(*args):
    out = step_fn(*args)
    auxes.append(jax.device_get(out[2]))
    return out

  return step, auxes


def _moe(colls):
  return [c for c in colls if "/moe/" in c.op_name]


@pytest.mark.parametrize("sizes,dispatch", CASES, ids=lambda v: "x".join(map(str, v))
                         if isinstance(v, tuple) else v)
def test_expert_parallel_step_moves_tokens_by_all_to_all(reference, sizes, dispatch):
  ref_params, prompts, ref_toks, ref_logits, ref_auxes = reference
  drops = max(float(a["drop_rate"].max()) for a in ref_auxes)
  assert drops > 0.02, "the workload must drop pairs, or capacity is not exercised"
  c = _cfg(dispatch)
  m, rules = c.model, c.logical_axis_rules
  c.mesh.update(data=sizes[0], expert=sizes[1], tensor=sizes[2])
  mesh = mesh_lib.make_mesh(c.mesh, m)
  step = steps.make_step_fn(m, mesh, rules, record_routing=True)
  params = sharding.put(ref_params, sharding.param_shardings(m, mesh, rules))
  make_cache = steps.make_cache_fn(m, mesh, rules)
  recording, auxes = _recording(step)
  toks, logits = step_driver.run(recording, params, make_cache(step_driver.SLOTS), prompts,
                                 NEW_TOKENS)
  np.testing.assert_array_equal(toks, ref_toks)
  np.testing.assert_allclose(logits, ref_logits, atol=SHARDED_LOGITS_ATOL, rtol=0)
  # The same Routing on every step and layer: which expert, and which pairs were kept.
  for aux, ref_aux in zip(auxes, ref_auxes, strict=True):
    for rt, ref_rt in zip(aux["routing"], ref_aux["routing"], strict=True):
      np.testing.assert_array_equal(rt.expert_index, ref_rt.expert_index)
      np.testing.assert_array_equal(rt.kept, ref_rt.kept)

  n = step_driver.SLOTS  # the workload's step shapes: decode [n, 1] + prefill [n, CHUNK]
  batch = parts.StepBatch(
      parts.decode_part(np.ones(n), np.arange(n), np.zeros(n), np.arange(n)),
      parts.chunk_part(np.ones((n, step_driver.CHUNK)), np.arange(n), np.zeros(n),
                       np.full(n, step_driver.CHUNK), n + np.arange(n)))  # one request per row
  text = step.lower(params, make_cache(n), batch).compile().as_text()
  moe = _moe(hlo.collectives(text))
  # Two all-to-alls per MoE layer (to the experts, back), at the buffer re-layout.
  a2a = [x for x in moe if x.kind == "all-to-all" and x.op_name.endswith("/transpose")]
  assert len(a2a) >= 2 * m.num_layers, moe
  # Expert weights stay put: nothing gathers an [E, ...] weight (full or partly gathered).
  e_local = m.num_experts // sizes[1]
  weights = {f"f32[{e},{a},{b}]" for e in range(e_local + 1, m.num_experts + 1)
             for a, b in ((m.d_model, m.d_ff_expert), (m.d_ff_expert, m.d_model))}
  assert not [x for x in moe if x.kind == "all-gather" and any(w in x.shape for w in weights)]
  # No reduction over the split expert axis: the combine is local to each group.
  t = n + n * step_driver.CHUNK
  assert not [x for x in moe if x.kind == "all-reduce" and f"f32[{t},{m.d_model}]" in x.shape]
  assert not [x for x in moe if "gsec,gecd->gsd" in x.op_name or "skd,sk->sd" in x.op_name]
