"""Mesh from config: -1 fills the rest, and every impossible mesh stops early naming its numbers."""
import jax
import pytest

from configs import base
from moe_serve import config as config_lib
from moe_serve.parallel import mesh as mesh_lib


def _cfg(data, expert, tensor, **model):
  cfg = base.get_config("size=tiny")
  cfg.mesh.update(data=data, expert=expert, tensor=tensor)
  cfg.model.update(model)
  return cfg


@pytest.mark.parametrize("sizes, devices, want", [
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((2, -1, 1), 8, (2, 4, 1)),
    ((2, 2, -1), 8, (2, 2, 2)),
    ((1, 1, 1), 1, (1, 1, 1)),
    ((-1, 4, 1), 4, (1, 4, 1)),
])
def test_mesh_shape_fills_minus_one(sizes, devices, want):
  cfg = _cfg(*sizes)
  assert mesh_lib.mesh_shape(cfg.mesh, cfg.model, devices) == want


def test_make_mesh_axes_are_auto_and_ordered():
  cfg = _cfg(2, 2, 2)
  mesh = mesh_lib.make_mesh(cfg.mesh, cfg.model)
  assert dict(mesh.shape) == {"data": 2, "expert": 2, "tensor": 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  # tensor is the innermost axis: its neighbours are adjacent devices
  assert [d.id for d in mesh.devices[0, 0]] == [0, 1]


@pytest.mark.parametrize("sizes, model, devices, message", [
    ((1, 8, 1), {}, 8, r"model.num_experts=4 is not divisible by mesh.expert=8; use a "
                       r"mesh.expert in \[1, 2, 4\]"),
    ((2, 1, 4), {}, 8, r"model.num_kv_heads=2 is not divisible by mesh.tensor=4"),
    ((1, 1, 8), dict(num_kv_heads=4), 8, r"model.num_heads=4 is not divisible by mesh.tensor=8"),
    ((4, 2, 2), {}, 8, r"needs 16 devices but only 8 exist"),
    ((-1, -1, 1), {}, 8, r"mesh uses -1 for 2 axes \['data', 'expert'\]; at most one"),
    ((-1, 3, 1), dict(num_experts=6), 8,
     r"mesh fixed sizes multiply to 3, which does not divide the 8 devices"),
    ((2, 2, 1), {}, 8, r"uses 4 of 8 devices; make the product 8 or set one axis to -1"),
    ((0, 1, 1), {}, 8, r"mesh.data=0 must be a positive integer or -1"),
    ((2, -1, 1), {}, 16, r"model.num_experts=4 is not divisible by mesh.expert=8"),
])
def test_bad_mesh_names_numbers(sizes, model, devices, message):
  cfg = _cfg(*sizes, **model)
  with pytest.raises(config_lib.ConfigError, match=message):
    mesh_lib.mesh_shape(cfg.mesh, cfg.model, devices)


def test_make_mesh_on_more_devices_than_exist():
  cfg = _cfg(16, 1, 1)
  with pytest.raises(config_lib.ConfigError, match=r"needs 16 devices but only 8 exist"):
    mesh_lib.make_mesh(cfg.mesh, cfg.model)



def test_single_process_scripts_refuse_several_processes():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  from moe_serve.parallel import distributed  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(num_processes=2, process_id=0, coordinator_address="127.0.0.1:1"):
    with pytest.raises(distributed.DistributedError, match="runs in one process"):
      distributed.initialize_from_flags(multi_process=False)
  with flagsaver.flagsaver(distributed_auto=True):
    with pytest.raises(distributed.DistributedError, match="runs in one process"):
      distributed.initialize_from_flags(multi_process=False)
