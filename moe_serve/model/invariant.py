"""Batch invariance by construction (`model.batch_invariant`): no op's result for a row may depend
on how many rows the step has, where the row sits, or what the other rows hold.

Two kinds of op decide a row's bits and can depend on the step's shape (docs/serving.md,
"Batch invariance"):
- a matmul over the step's rows: XLA:CPU picks its kernel and blocking by the number of rows,
  and the order in which a row's products are summed follows. `matmul` runs every such product on
  fixed tiles of `ROW_TILE` rows in a loop (`row_tiled`): the loop body is one compiled
  computation of one shape whatever T is, and T only changes how many times it runs;
- a sum whose length follows the step (attention over the cache positions a kv bucket reads).
  `sum_terms` adds a list of arrays left to right as elementwise ops, so its order is the
  expression's, not a reduction kernel's; attention adds fixed chunks of `KV_CHUNK` positions
  that way and folds the chunks together in position order (attend.attend_chunked).

Row-local reductions (RMSNorm over D, softmaxes over E or V, top-k) are left to XLA: they reduce
one row's own values over an axis of fixed size. The tests compare them at many row counts and
under several `--xla_cpu_max_isa` values (tests/model/test_invariant.py).

Axis letters (docs/design.md section 2): T rows (tokens), D input width, F output width,
G tiles of ROW_TILE rows.
"""
import math

import jax
import jax.numpy as jnp

# Rows per matmul tile. A row's bits depend on the tile size, so it is one constant for every
# step shape, decode and prefill alike. Measured on the bundled model (benchmarks/RESULTS.md,
# "Batch-invariant mode"): see there for why this value.
ROW_TILE = 16
# Cache positions per attention chunk; model.max_len must be a multiple (config.py checks).
KV_CHUNK = 32


def row_tiled(fn, x_TxD, *consts, tile=ROW_TILE):
  """`fn(x_tile, *consts)` applied to x's rows in tiles of `tile` rows, one tile per iteration of
  a loop of at least two iterations. `x_TxD` may be a tuple of arrays with T rows each (fn then
  takes and returns tuples); the last tile is padded with zero rows, whose outputs are dropped.

  Why at least two: XLA inlines a loop that runs once, and the inlined ops may then fuse with
  their neighbours, which changes how a reduction inside is emitted (seen: an RMSNorm's bits
  changed with what produced its input). A loop body is its own computation, compiled the same
  way for every T.
  """
  xs = x_TxD if isinstance(x_TxD, tuple) else (x_TxD,)
  t = xs[0].shape[0]
  g = max(-(-t // tile), 2)
  tiled = tuple(jnp.pad(x, [(0, g * tile - t)] + [(0, 0)] * (x.ndim - 1)).reshape(
      (g, tile) + x.shape[1:]) for x in xs)
  body = (lambda x: fn(x, *consts)) if isinstance(x_TxD, tuple) else (
      lambda x: fn(x[0], *consts))
  ys = jax.lax.map(body, tiled)
  return jax.tree.map(lambda y: y.reshape((g * tile,) + y.shape[2:])[:t], ys)


def matmul(x, w, invariant, axes=1):
  """x's last `axes` axes contracted with w's first `axes` (`jnp.tensordot`), or with
  `invariant` the same over fixed tiles of x's rows (every leading axis of x flattened)."""
  if not invariant:
    return jnp.tensordot(x, w, axes)
  lead, inner, out = x.shape[:x.ndim - axes], w.shape[:axes], w.shape[axes:]
  w_DxF = w.reshape(math.prod(inner), -1)
  y_TxF = row_tiled(jnp.matmul, x.reshape(-1, w_DxF.shape[0]), w_DxF)
  return y_TxF.reshape(lead + out)


def sum_terms(terms):
  """terms[0] + terms[1] + ... in that order, as elementwise adds (XLA does not reassociate
  them), so the sum's bits do not depend on any shape."""
  acc = terms[0]
  for term in terms[1:]:
    acc = acc + term
  return acc
