"""The model's input unit: a `Part` is a block of rows of tokens that attend the same way.

A full forward pass is one part without a cache. An engine step is two parts against the slot KV
cache: decode rows `[B, 1]` and prefill chunk rows `[P, L]`. Each row belongs to one slot; tokens
with a negative segment id are padding: they write nothing to the cache and never take an
expert's capacity. After attention the parts' tokens meet in one flat token set `[T]` whose order
`FlatOrder` defines (decode rows first, then the P x L prefill tokens).

Axis letters: B rows of a part (decode rows in a step), L tokens per row, P prefill rows,
L chunk length, T flat tokens (sum of rows x length over the parts).
"""
import collections
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Part(NamedTuple):
  """Rows of tokens `[B, L]` that attend the same way (see the module docstring)."""
  tokens_BxL: jnp.ndarray  # int32
  positions_BxL: jnp.ndarray  # int32, position of each token in its sequence
  segment_ids_BxL: jnp.ndarray  # int32, request id; negative = padding
  slots_B: jnp.ndarray | None  # int32 cache row of each row; None = no cache (full forward)


class StepBatch(NamedTuple):
  """An engine step's input: decode rows, then prefill chunk rows (the flat token order), and
  optionally routing replay codes per flat token and MoE layer (model/routing.py)."""
  decode: Part  # [B, 1]
  prefill: Part  # [P, L]
  forced_TxYxK: jnp.ndarray | None = None  # int32; None = every token routed freely


class FlatOrder(NamedTuple):
  """Where each part's tokens sit in the flat token set `[T]` that the FFN/MoE sees.

  Parts in list order (an engine step: decode rows `[B, 1]`, then prefill rows `[P, L]`), each
  part row-major, padding included: T = sum of rows x length. The model (transformer.py), the
  engine's step cost and drop records, and the tracer all index tokens through this.
  """
  row_shapes: tuple  # (rows, length) of each part, in order

  @classmethod
  def of(cls, xs):
    """The order of per-part arrays `[rows, length, ...]` (or Parts, by their tokens)."""
    return cls(tuple(tuple(getattr(x, "tokens_BxL", x).shape[:2]) for x in xs))

  @classmethod
  def of_step(cls, decode_rows, prefill_rows, chunk_len):
    """The order of an engine step of shape (B, P, L)."""
    return cls(((decode_rows, 1), (prefill_rows, chunk_len)))

  @property
  def num_tokens(self):
    """T: every token position of every part, padding included."""
    return self.start(len(self.row_shapes))

  def start(self, part):
    """Flat index of the first token of part `part` (the tokens of the parts before it)."""
    return sum(rows * length for rows, length in self.row_shapes[:part])

  def index(self, part, row, offset):
    """Flat index of token `offset` of row `row` of part `part`."""
    return self.start(part) + row * self.row_shapes[part][1] + offset

  def flatten(self, xs, xp=jnp):
    """Per-part arrays `[rows, length, ...]` -> one `[T, ...]` array (`xp`: jnp or np)."""
    return xp.concatenate([xp.asarray(x).reshape((rows * length,) + tuple(x.shape[2:]))
                           for x, (rows, length) in zip(xs, self.row_shapes)], axis=0)

  def unflatten(self, x_Tx):
    """`[T, ...]` -> per-part arrays `[rows, length, ...]` (the inverse of `flatten`)."""
    out = []
    for i, (rows, length) in enumerate(self.row_shapes):
      start = self.start(i)
      out.append(x_Tx[start:start + rows * length].reshape((rows, length) + x_Tx.shape[1:]))
    return out


def full_part(tokens_BxL, segment_ids_BxL=None):
  """A cache-free part for a full forward pass; row b is its own sequence unless segment ids say."""
  tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
  b, length = tokens_BxL.shape
  positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  if segment_ids_BxL is None:
    segment_ids_BxL = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, length))
  return Part(tokens_BxL, positions_BxL, jnp.asarray(segment_ids_BxL, jnp.int32), None)


def empty_part(rows, length):
  """A part of `rows` padding rows; `rows` may be 0."""
  z = np.zeros((rows, length), np.int32)
  return Part(z, z, z - 1, np.zeros((rows,), np.int32))


def chunk_part(tokens_PxL, slots_P, starts_P, lengths_P, segment_ids_P):
  """Prefill chunks: row p holds `lengths_P[p]` real tokens at positions starts_P[p] + i.

  Host-side (numpy) builder; positions past a row's length are padding (segment id -1).
  """
  tokens_PxL = np.asarray(tokens_PxL, np.int32)
  p, c = tokens_PxL.shape
  offs_L = np.arange(c, dtype=np.int32)
  positions_PxL = np.asarray(starts_P, np.int32)[:, None] + offs_L
  valid_PxL = offs_L < np.asarray(lengths_P, np.int32)[:, None]
  seg_PxL = np.where(valid_PxL, np.asarray(segment_ids_P, np.int32)[:, None], -1).astype(np.int32)
  return Part(tokens_PxL, positions_PxL, seg_PxL, np.asarray(slots_P, np.int32).reshape(p))


def decode_part(tokens_B, slots_B, positions_B, segment_ids_B):
  """Decode rows: one token per row at `positions_B`; segment id -1 marks an idle row."""
  col = lambda a: np.asarray(a, np.int32).reshape(-1, 1)
  return Part(col(tokens_B), col(positions_B), col(segment_ids_B),
              np.asarray(slots_B, np.int32).reshape(-1))


def prefill_batches(prompts_ids, chunk, rows=None):
  """StepBatches that prefill prompt i into slot i, chunk by chunk, with idle decode rows.

  `rows` >= len(prompts_ids) pads every step with idle rows (e.g. to a fixed slot count, or a
  multiple of a mesh's data axis). Host-side (numpy) builder.
  """
  n = rows or len(prompts_ids)
  idle = decode_part(np.zeros(n), np.arange(n), np.zeros(n), -np.ones(n))
  for start in range(0, max(len(p) for p in prompts_ids), chunk):
    toks, lens = np.zeros((n, chunk), np.int32), np.zeros(n, np.int32)
    for i, ids in enumerate(prompts_ids):
      piece = ids[start:start + chunk]
      toks[i, :len(piece)], lens[i] = piece, len(piece)
    seg = np.where(lens > 0, np.arange(n), -1)
    yield StepBatch(idle, chunk_part(toks, np.arange(n), np.full(n, start), lens, seg))


def check_one_request_per_row(batch: StepBatch):
  """Raises ValueError unless every row of `batch` holds at most one request (segment id) and a
  request at most one row, as api.step requires. Host-side (numpy), vectorised."""
  ids = []
  for name, part in (("decode", batch.decode), ("prefill", batch.prefill)):
    seg_BxL = np.asarray(part.segment_ids_BxL, np.int64)
    real_BxL = seg_BxL >= 0
    lo_B = np.where(real_BxL, seg_BxL, 2**62).min(axis=1, initial=2**62)
    hi_B = np.where(real_BxL, seg_BxL, -1).max(axis=1, initial=-1)
    mixed_B = real_BxL.any(axis=1) & (lo_B != hi_B)
    if mixed_B.any():
      b = int(np.argmax(mixed_B))
      raise ValueError(f"{name} row {b} holds more than one request "
                       f"(segment ids {lo_B[b]} and {hi_B[b]}); a step row is one request's")
    ids.append(hi_B[real_BxL.any(axis=1)])
  check_distinct_requests(np.concatenate(ids).tolist())


def check_distinct_requests(request_ids):
  """Raises ValueError if a request id appears twice among a step's rows (a request may have at
  most one row). The engine calls this on its plan: each row it builds holds one request."""
  if len(set(request_ids)) != len(request_ids):
    dup = sorted(i for i, n in collections.Counter(request_ids).items() if n > 1)
    raise ValueError(f"requests {dup} have more than one row in the step")
