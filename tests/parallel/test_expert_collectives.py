"""What the compiled step communicates when experts are split over the mesh `expert` axis.

The MoE layer as written (dispatch.py, flat token axis T and [E, C, D] buffers) is partitioned by
GSPMD as: each device keeps its E / expert experts' weights (never gathered), builds the buffer
rows of its own experts from the tokens it holds, and the combine `tec,ecd->td` contracts over the
split E axis, i.e. an all-reduce of [T, D] over `expert`. With tokens also split over `data`, the
partial buffers are all-reduced over `data` first. No all-to-all: the token axis is contracted, so
there is no axis for one to move. A GShard-style group axis kept through dispatch (tokens
[G, S, D] with G on (data, expert), buffers [E, G, C, D] on (expert, data)) turns both exchanges
into all-to-alls: shown on a stand-alone dispatch below, the constraint docs/sharding.md proposes.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from moe_serve.model import parts
from moe_serve.parallel import hlo
from moe_serve.parallel import mesh as mesh_lib
from moe_serve.parallel import sharding, steps

SLOTS = 8


def _compiled_step_hlo(sizes, dispatch="einsum", scope="batch"):
  cfg = base.get_config("size=tiny")
  m, rules = cfg.model, cfg.logical_axis_rules
  m.update(num_experts=8)
  m.router.update(dispatch=dispatch, capacity_scope=scope)
  cfg.mesh.update(data=sizes[0], expert=sizes[1], tensor=sizes[2])
  mesh = mesh_lib.make_mesh(cfg.mesh, m)
  n = SLOTS
  batch = parts.StepBatch(
      parts.decode_part(np.ones(n), np.arange(n), np.zeros(n), np.arange(n)),
      parts.chunk_part(np.ones((n, 8)), np.arange(n), np.zeros(n), np.full(n, 8), np.arange(n)))
  step = steps.make_step_fn(m, mesh, rules)
  params = sharding.abstract_params(m, mesh, rules)  # lowering needs no parameter values
  cache = steps.make_cache_fn(m, mesh, rules)(n)
  return m, step.lower(params, cache, batch).compile().as_text()


def _moe(colls):
  return [c for c in colls if "/moe/" in c.op_name]


@pytest.mark.parametrize("sizes", [(1, 8, 1), (2, 4, 1)])
def test_expert_parallel_step_keeps_weights_local_and_reduces_outputs(sizes):
  m, text = _compiled_step_hlo(sizes)
  moe = _moe(hlo.collectives(text))
  # expert weights [E, D, F] are never gathered: each device computes only its experts
  full_w = f"f32[{m.num_experts},{m.d_model},{m.d_ff_expert}]"
  assert not [c for c in moe if c.kind == "all-gather" and full_w in c.shape], moe
  # the combine contracts over the split expert axis: an all-reduce of the [T, D] output
  combine = [c for c in moe if "tec,ecd->td" in c.op_name]
  assert combine and all(c.kind == "all-reduce" for c in combine), moe
  if sizes[0] > 1:  # tokens split over data too: partial expert buffers are summed over data
    dispatch = [c for c in moe if "tec,td->ecd" in c.op_name]
    local_buffer = f"f32[{m.num_experts // sizes[1]},"
    assert any(c.kind == "all-reduce" and local_buffer in c.shape for c in dispatch), moe
  assert "all-to-all" not in {c.kind for c in moe if "tec," in c.op_name}


def test_grouped_dispatch_exchanges_tokens_by_all_to_all():
  """GShard dispatch with a kept group axis: the constraint change proposed for dispatch.py."""
  mesh = jax.make_mesh((2, 4, 1), mesh_lib.MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = (("groups", ("data", "expert")), ("exp", "expert"), ("groups_data", "data"),
           ("embed_moe", None))
  g, s, e, c, d = 8, 16, 8, 4, 32

  def moe_ffn(x_GxSxD, dispatch_GxSxExC, w_ExDxD):
    with mesh_lib.logical_context(mesh, rules):
      x_GxSxD = nn.with_logical_constraint(x_GxSxD, ("groups", None, "embed_moe"))
      dispatch_GxSxExC = nn.with_logical_constraint(dispatch_GxSxExC,
                                                    ("groups", None, None, None))
      buffer_axes = ("exp", "groups_data", None, "embed_moe")
      x_ExGxCxD = nn.with_logical_constraint(
          jnp.einsum("gsec,gsd->egcd", dispatch_GxSxExC, x_GxSxD), buffer_axes)
      y_ExGxCxD = nn.with_logical_constraint(
          jnp.einsum("egcd,edf->egcf", x_ExGxCxD, w_ExDxD), buffer_axes)
      return nn.with_logical_constraint(jnp.einsum("gsec,egcf->gsf", dispatch_GxSxExC, y_ExGxCxD),
                                        ("groups", None, "embed_moe"))

  w_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("expert"))
  args = (jax.ShapeDtypeStruct((g, s, d), jnp.float32),
          jax.ShapeDtypeStruct((g, s, e, c), jnp.float32),
          jax.ShapeDtypeStruct((e, d, d), jnp.float32, sharding=w_sharding))
  colls = hlo.collectives(jax.jit(moe_ffn).lower(*args).compile().as_text())
  kinds = {(c.kind, c.op_name.split("/")[-2]) for c in colls}
  assert ("all-to-all", "gsec,gsd->egcd") in kinds, colls  # tokens to their experts
  assert ("all-to-all", "gsec,egcf->gsf") in kinds, colls  # results back to their tokens
  assert not [c for c in colls if c.kind in ("all-gather", "all-reduce")], colls
