"""Agreement between the processes of a multi-process (SPMD) run, and its check.

Every process runs the same scheduler on the same requests and the same virtual clock, so they
issue the same steps in the same order (what a multi-controller jit needs). Three things keep
them together and prove it:
- `agreed_max(x)`: one value every process uses, the maximum of theirs (the `measured` clock's
  step duration, exchanged each step, so wall-time noise cannot make schedules drift apart);
- `broadcast_json(obj)`: process 0's value on every process (e.g. which sweep runs are left,
  which only process 0 can read from its files);
- `check_same(digest, what)`: at the end, every process compares the digest of its records with
  every other's and raises `DivergedError` naming the processes that differ.
With one process each is the identity (no collective runs). Values travel as exact bytes
(float64 as two uint32), never rounded by jax's default 32-bit types.
"""
import hashlib
import json

import jax
from jax.experimental import multihost_utils
import numpy as np


class DivergedError(RuntimeError):
  """The processes of one run computed different records: their schedules drifted apart."""


def multi_process():
  return jax.process_count() > 1


def _allgather_u32(x_N):
  """[P, N] uint32: every process's `x_N`, row p from process p."""
  return np.asarray(multihost_utils.process_allgather(np.asarray(x_N, np.uint32)))


def agreed_max(x):
  """max over processes of the float `x`, exactly (the identity with one process)."""
  if not multi_process():
    return x
  gathered = _allgather_u32(np.array([x], np.float64).view(np.uint32))
  return float(np.ascontiguousarray(gathered).view(np.float64).max())


def broadcast_json(obj):
  """Process 0's `obj` (JSON-serialisable) on every process (the identity with one process)."""
  if not multi_process():
    return obj
  data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
  n = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buf = np.zeros(n, np.uint8)
  buf[:min(n, data.size)] = data[:n]
  out = np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8)
  return json.loads(out.tobytes().decode())


class Digest:
  """A running SHA-256 of records (JSON with sorted keys: equal records, equal bytes)."""

  def __init__(self):
    self._h = hashlib.sha256()

  def add(self, records):
    for rec in records:
      self._h.update(json.dumps(rec, sort_keys=True, separators=(",", ":")).encode())
      self._h.update(b"\n")
    return self

  def hexdigest(self):
    return self._h.hexdigest()


def check_same(digest_hex, what):
  """Raises DivergedError on every process unless all processes hold the same `digest_hex`
  (a SHA-256 hex string) for `what`; returns it. A no-op with one process."""
  if not multi_process():
    return digest_hex
  mine = np.frombuffer(bytes.fromhex(digest_hex), np.uint32)
  rows = _allgather_u32(mine)
  differ = [p for p in range(rows.shape[0]) if not np.array_equal(rows[p], rows[0])]
  if differ:
    raise DivergedError(
        f"multi-process run diverged: the {what} of process(es) {differ} differ from process 0's "
        f"(this is process {jax.process_index()}, digest {digest_hex[:16]}...; process 0 "
        f"{rows[0].tobytes().hex()[:16]}...). The processes did not run the same schedule or "
        "computed different tokens; the files process 0 wrote are not a valid SPMD result")
  return digest_hex
