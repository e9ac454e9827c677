"""Orbax checkpoints: save a pytree, restore it onto abstract targets (which may carry shardings).

Restoring never falls back to a fresh init: a missing or unreadable checkpoint raises
`CheckpointError` naming the directory and what was found there.
"""
import os

import jax
import orbax.checkpoint as ocp


_ITEM = "default"  # the item name CheckpointManager uses for a single StandardSave


class CheckpointError(RuntimeError):
  """A checkpoint directory is missing, empty or unreadable."""


def manager(directory, max_to_keep=3, save_interval_steps=1, create=True):
  """A CheckpointManager over `directory` (made absolute, as Orbax requires)."""
  directory = os.path.abspath(os.fspath(directory))
  if not create and not os.path.isdir(directory):
    raise CheckpointError(f"checkpoint directory {directory} does not exist")
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         save_interval_steps=save_interval_steps, create=create)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr, step, state, force=False):
  """Saves `state` at `step` (respecting save_interval_steps unless forced); waits for it."""
  saved = mngr.save(step, args=ocp.args.StandardSave(state), force=force)
  mngr.wait_until_finished()
  return saved


def abstract_like(state, shardings=None):
  """ShapeDtypeStructs of `state`, with `shardings` (a matching pytree) attached if given."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=getattr(x, "sharding", None)),
                        state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def restore(mngr, abstract_state, step=None):
  """Restores `step` (default: latest) onto `abstract_state` (e.g. from `jax.eval_shape`)."""
  directory = mngr.directory
  if step is None:
    step = mngr.latest_step()
  if step is None:
    raise CheckpointError(f"no checkpoint found in {directory} (nothing to restore; "
                          "refusing to start from a fresh init)")
  if step not in mngr.all_steps():
    raise CheckpointError(f"no checkpoint for step {step} in {directory}; "
                          f"available steps: {list(mngr.all_steps())}")
  item_dir = os.path.join(os.fspath(directory), str(step), _ITEM)
  if not os.path.isdir(item_dir):  # Orbax's own error here is about `Composite` args
    raise CheckpointError(f"checkpoint step {step} in {directory} holds no saved state "
                          f"({item_dir} is missing): incomplete, or not written by save()")
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # Orbax raises many types for unreadable data; keep the cause chained.
    raise CheckpointError(f"checkpoint step {step} in {directory} could not be restored: "
                          f"{type(e).__name__}: {e}") from e
