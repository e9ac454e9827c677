"""The device mesh from `config.mesh` and the context that makes logical constraints bind to it.

Axes are `(data, expert, tensor)`, outermost first, so `tensor` neighbours share the fastest links
(on one host, adjacent device ids). All axes are Auto: Linen's logical constraints
(`nn.with_logical_constraint`) then become GSPMD sharding hints that XLA propagates.
"""
import contextlib

import flax.linen as nn
import jax
from jax.sharding import AxisType

from moe_serve import config as config_lib

MESH_AXES = config_lib.MESH_AXES


def mesh_shape(mesh_cfg, model_cfg, num_devices):
  """Resolved `(data, expert, tensor)` sizes; ConfigError naming the numbers if impossible."""
  return config_lib.validate_mesh(mesh_cfg, model_cfg, num_devices)


def make_mesh(mesh_cfg, model_cfg, devices=None):
  """A `jax.sharding.Mesh` over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, model_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def single_device_mesh(device=None):
  """A (1, 1, 1) mesh on one device: the sharded code path without any partitioning."""
  device = jax.devices()[0] if device is None else device
  return jax.make_mesh((1, 1, 1), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=[device])


@contextlib.contextmanager
def logical_context(mesh, rules):
  """Binds logical axis names to `mesh` while a function is traced.

  Entered inside the jitted function, so the constraints apply whenever it is (re)traced and
  cannot leak into, or depend on, the caller's context. The abstract mesh is enough for
  constraints and, unlike `jax.set_mesh`, may be entered under a trace.
  """
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
    yield
