"""Checkpoints restore onto any valid mesh bit for bit, and bad directories fail loudly.

Saved from a (1, 8, 1) mesh (experts split 8 ways), restored onto (2, 2, 2) and onto one device:
every parameter is bitwise equal and carries the target's sharding. Missing, empty, corrupt or
incomplete checkpoints raise CheckpointError naming the directory; none falls back to a fresh
init.
"""
import glob
import os
import shutil

import jax
import numpy as np
import pytest

from configs import base
from moe_serve import checkpoint
from moe_serve.parallel import mesh as mesh_lib
from moe_serve.parallel import sharding, steps


@pytest.fixture(scope="module")
def cfg():
  c = base.get_config("size=tiny")
  c.model.num_experts = 8
  return c


@pytest.fixture(scope="module")
def saved(cfg, tmp_path_factory):
  """Parameters initialised on (1, 8, 1) and saved at step 7."""
  c = cfg.copy_and_resolve_references()
  c.mesh.update(data=1, expert=8, tensor=1)
  mesh = mesh_lib.make_mesh(c.mesh, c.model)
  params = steps.make_init_fn(c.model, mesh, c.logical_axis_rules)(0)
  assert params["block_0"]["moe"]["experts"]["w_up"].sharding.spec[0] == "expert"
  directory = tmp_path_factory.mktemp("ckpt") / "params"
  checkpoint.save(checkpoint.manager(directory), 7, params)
  return directory, jax.device_get(params)


def _target(cfg, sizes):
  c = cfg.copy_and_resolve_references()
  c.mesh.update(data=sizes[0], expert=sizes[1], tensor=sizes[2])
  devices = jax.devices()[:int(np.prod(sizes))]
  mesh = mesh_lib.make_mesh(c.mesh, c.model, devices)
  return sharding.abstract_params(c.model, mesh, c.logical_axis_rules)


@pytest.mark.parametrize("sizes", [(2, 2, 2), (1, 1, 1)])
def test_restore_onto_another_mesh_is_bitwise(cfg, saved, sizes):
  directory, want = saved
  target = _target(cfg, sizes)
  got = checkpoint.restore(checkpoint.manager(directory, create=False), target)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w, t in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(target)):
    assert g.sharding == t.sharding
    np.testing.assert_array_equal(np.asarray(g), w)


def test_missing_and_empty_directories(tmp_path, cfg):
  target = _target(cfg, (1, 1, 1))
  with pytest.raises(checkpoint.CheckpointError, match=r"nowhere does not exist"):
    checkpoint.manager(tmp_path / "nowhere", create=False)
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint found in .*empty "
                                                       r"\(nothing to restore; refusing"):
    checkpoint.restore(checkpoint.manager(tmp_path / "empty", create=False), target)


def test_unknown_step(cfg, saved):
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint for step 3 .*\[7\]"):
    checkpoint.restore(checkpoint.manager(saved[0], create=False), _target(cfg, (1, 1, 1)), 3)


def _corrupt(directory, how):
  files = glob.glob(os.path.join(directory, "7", "**"), recursive=True)
  if how == "garbage":  # every file overwritten
    for f in files:
      if os.path.isfile(f):
        with open(f, "wb") as fh:
          fh.write(b"garbage")
  elif how == "truncated_data":  # metadata intact, array chunks empty
    for f in files:
      if os.path.isfile(f) and f"{os.sep}d{os.sep}" in f:
        open(f, "wb").close()
  elif how == "no_item":  # the step directory without its saved state
    shutil.rmtree(os.path.join(directory, "7", "default"))


@pytest.mark.parametrize("how, message", [
    ("garbage", r"checkpoint step 7 in .* could not be restored: JSONDecodeError"),
    ("truncated_data", r"checkpoint step 7 in .* could not be restored"),
    ("no_item", r"checkpoint step 7 in .* holds no saved state"),
])
def test_corrupt_checkpoint_raises(cfg, saved, tmp_path, how, message):
  directory = tmp_path / "copy"
  shutil.copytree(saved[0], directory)
  _corrupt(directory, how)
  with pytest.raises(checkpoint.CheckpointError, match=message):
    checkpoint.restore(checkpoint.manager(directory, create=False), _target(cfg, (1, 1, 1)))


def test_restore_onto_a_different_model_shape_raises(cfg, saved):
  c = cfg.copy_and_resolve_references()
  c.model.d_ff_expert *= 2
  target = sharding.abstract_params(c.model, mesh_lib.single_device_mesh(),
                                    c.logical_axis_rules)
  with pytest.raises(checkpoint.CheckpointError, match=r"could not be restored: .*not compatible "
                                                       r"with the stored shape"):
    checkpoint.restore(checkpoint.manager(saved[0], create=False), target)
