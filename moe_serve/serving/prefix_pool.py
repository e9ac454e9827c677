"""Prefix caching on the device: the pool of cached KV blocks and the copies in and out of slots.

The model's cache keeps each request's keys and values in its slot (model/api.py: k [S, M, H, J],
v [S, M, J, H]; with model.attention="mla" only the latent k [S, 1, Hc+Hr, J]), so a cached block
lives in a pool beside it, per layer [N, P, M, H] for each of the layer's cache arrays (the
latent: [N, P, 1, Hc+Hr]), N = serve.kv_num_blocks places, P = kv_block_size positions. After
a step, every block a request completed and the prefix cache registered is copied out (`save`);
at admission, the blocks a request found cached are copied into its slot (`load`). The copies
are exact (gathers and scatters), so a hit gives the slot the bits the block's computing request
wrote.

This costs device memory a paged cache would not need (a block in use sits in the pool and in a
slot) and two small copies per step that the cost model does not price (docs/serving.md).

Each copy list is padded to a power of two (at least MIN_COPIES) so a run compiles a few
copy shapes; `warm` compiles them all. Padding copies point past the end and are dropped.
Axis letters: N pool places (or copies), P positions in a block, M kv heads, H head dim,
S slots, J cache positions, Hc latent width and Hr rotary key width (MLA).
"""
import jax
import jax.numpy as jnp
import numpy as np

from moe_serve.model import attend

MIN_COPIES = 8


def _positions_NxP(starts_N, block_size):
  return starts_N[:, None] + jnp.arange(block_size, dtype=jnp.int32)[None, :]


def _read(cache_array, which, slots_N, pos_NxP):
  """Keys ("k" [S, M, H, J]) or values ("v" [S, M, J, H]) of the listed blocks, [N, P, M, H]."""
  if attend.position_axis(which) == 3:
    return cache_array[slots_N[:, None], :, :, pos_NxP]  # advanced axes first
  return cache_array[slots_N[:, None], :, pos_NxP, :]


def _write(cache_array, which, slots_N, pos_NxP, blocks_NxPxMxH):
  """`cache_array` with the blocks [N, P, M, H] written at (slot, positions); slots past the end
  are dropped."""
  if attend.position_axis(which) == 3:
    at = cache_array.at[slots_N[:, None], :, :, pos_NxP]
  else:
    at = cache_array.at[slots_N[:, None], :, pos_NxP, :]
  return at.set(blocks_NxPxMxH, mode="drop")


def _save(cache, pool, slots_N, starts_N, places_N):
  pos_NxP = _positions_NxP(starts_N, pool[0]["k"].shape[1])
  out = []
  for layer, held in zip(cache["layers"], pool):
    slots = jnp.clip(slots_N, 0, layer["k"].shape[0] - 1)
    out.append({c: held[c].at[places_N].set(_read(layer[c], c, slots, pos_NxP), mode="drop")
                for c in layer})
  return out


def _load(cache, pool, slots_N, starts_N, places_N):
  pos_NxP = _positions_NxP(starts_N, pool[0]["k"].shape[1])
  layers = []
  for layer, held in zip(cache["layers"], pool):
    layers.append({c: _write(layer[c], c, slots_N, pos_NxP,
                             held[c][jnp.clip(places_N, 0, held[c].shape[0] - 1)])
                   for c in layer})
  return dict(cache, layers=layers)


class Pool:
  """The device pool and its two copies (see the module docstring)."""

  def __init__(self, cache, num_blocks, block_size):
    self.block_size = block_size
    self.num_slots = cache["layers"][0]["k"].shape[0]
    self.num_blocks = num_blocks

    def place(layer):
      """Zeroed pool arrays [N, P, M, H] for each of the layer's cache arrays."""
      out = {}
      for c, a in layer.items():
        m, h = (a.shape[1], a.shape[2]) if attend.position_axis(c) == 3 else a.shape[1::2]
        out[c] = jnp.zeros((num_blocks, block_size, m, h), a.dtype)
      return out
    self.pool = [place(layer) for layer in cache["layers"]]
    keep = jax.tree.map(lambda a: a.sharding, cache)  # the step expects the cache where it was
    self._save = jax.jit(_save, donate_argnums=(1,))
    self._load = jax.jit(_load, donate_argnums=(0,), out_shardings=keep)

  def _args(self, copies, past_slot, past_place):
    n = max(MIN_COPIES, 1 << (len(copies) - 1).bit_length())
    a = np.array([(past_slot, 0, past_place)] * n, np.int32)
    if copies:
      a[:len(copies)] = np.asarray(copies, np.int32)
    return a[:, 0], a[:, 1] * self.block_size, a[:, 2]

  def save(self, cache, copies):
    """Copies (slot, block index, pool place) blocks from the cache into the pool."""
    if copies:
      self.pool = self._save(cache, self.pool, *self._args(copies, 0, self.num_blocks))

  def load(self, cache, copies):
    """Copies (slot, block index, pool place) blocks from the pool into the cache; returns it."""
    if not copies:
      return cache
    return self._load(cache, self.pool, *self._args(copies, self.num_slots, 0))

  def warm(self, cache, max_copies):
    """Compiles both copies for every padded size up to `max_copies`; returns the cache. Twice:
    the fresh pool is not yet committed to a device, its copies' outputs are (as in
    Engine.warmup)."""
    for _ in range(2):
      n = MIN_COPIES
      while True:
        none = [(self.num_slots, 0, self.num_blocks)] * n  # every copy dropped: no change
        cache = self._load(cache, self.pool, *self._args(none, self.num_slots, 0))
        self.pool = self._save(cache, self.pool, *self._args(none, 0, self.num_blocks))
        if n >= max_copies:
          break
        n *= 2
    return cache
