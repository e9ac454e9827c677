"""Decode attention over the slot cache: slot-order reads (B >= S) against gathered rows (B < S).

`attend.attend_cache` reads the cache two ways. Decode rows that can fill every slot attend in
slot order straight from the cache; fewer rows gather their slots' keys and values. Both compute
one row from its own slot only, so a row's output must agree between them (float32 rounding:
the two read arrays of different shapes, LOGITS_ATOL's reason), and the padding rows of the
slot-order read (segment id -1, slot 0 like the engine's idle rows) must not touch the real row
that holds slot 0.
"""
import jax
import jax.numpy as jnp
import numpy as np

from moe_serve.model import attend
from moe_serve.model.parts import Part
from tests.tolerances import LOGITS_ATOL

S, M, N, H, J = 6, 2, 4, 8, 16


def _decode_part(slots, positions, segments):
  col = lambda a: jnp.asarray(a, jnp.int32).reshape(-1, 1)
  return Part(col(np.zeros(len(slots))), col(positions), col(segments),
              jnp.asarray(slots, jnp.int32))


def test_slot_order_read_matches_gathered_rows_and_ignores_padding():
  rng = np.random.default_rng(0)
  cache = {"k": jnp.asarray(rng.normal(size=(S, M, H, J)), jnp.float32),  # layout: attend.py
           "v": jnp.asarray(rng.normal(size=(S, M, J, H)), jnp.float32)}
  # Rows 0-3 real, in an order unlike their slots (slot 0 among them); rows 4-7 padding on slot 0.
  slots = [3, 0, 5, 1, 0, 0, 0, 0]
  positions = [9, 4, 11, 0, 0, 0, 0, 0]
  segments = [10, 11, 12, 13, -1, -1, -1, -1]
  q_BxLxNxH = jnp.asarray(rng.normal(size=(len(slots), 1, N, H)), jnp.float32)
  kv_len = 12
  full = jax.jit(attend.attend_cache, static_argnums=3)  # B = 8 >= S: slot order
  got = np.asarray(full(q_BxLxNxH, cache, _decode_part(slots, positions, segments), kv_len))
  for row in range(4):  # each real row alone (B = 1 < S): its slot's keys gathered
    alone = _decode_part(slots[row:row + 1], positions[row:row + 1], segments[row:row + 1])
    want = np.asarray(full(q_BxLxNxH[row:row + 1], cache, alone, kv_len))
    np.testing.assert_allclose(got[row], want[0], atol=LOGITS_ATOL, rtol=0)
  # A query at position p weighs keys 0..p only: row 3 (position 0) returns its slot's key-0 value.
  np.testing.assert_allclose(got[3, 0], np.repeat(np.asarray(cache["v"])[1, :, 0], N // M, 0),
                             atol=LOGITS_ATOL, rtol=0)
  assert np.isfinite(got).all()
