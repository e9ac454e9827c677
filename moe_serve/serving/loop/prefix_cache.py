"""Prefix caching (serve.prefix_cache): the table of cached full KV blocks, on the host.

A block is `kv_block_size` tokens at positions [i * block_size, (i + 1) * block_size) of a
request's tokens (prompt + outputs so far). Once its keys and values are all computed it is
*registered*: keyed by the hash of its tokens and of every token before it (a chain, as in
vLLM's automatic prefix caching, so equal keys mean equal whole prefixes), and given a place in
the device pool (serving/loop/prefix_pool.py) that the engine copies it to. A later request whose
tokens begin with the same blocks *hits*: the engine copies those blocks into its slot and it
prefills only the rest.

Memory is counted in blocks against serve.kv_num_blocks, each cached block once however many
requests use it: a block held by running requests is *referenced* (refs > 0); one no request
holds stays cached until room is needed, then the least recently released goes first (LRU).
The scheduler (serving/loop/scheduler.py) decides when; this table only keeps the books.

What a hit reuses was computed inside another request's step, so with capacity scope `batch`
it carries that step's drops; with model.batch_invariant and scope none/sequence it is bitwise
what the request would have computed itself (docs/serving.md, "Prefix caching").
"""
import collections
import hashlib

import numpy as np


class Entry:
  """One cached block: its place in the pool, how many running requests hold it, and the
  request whose step computed it (forensics)."""
  __slots__ = ("pool_index", "refs", "owner")

  def __init__(self, pool_index, owner):
    self.pool_index, self.refs, self.owner = pool_index, 0, owner


def chain(tokens, block_size, hashes):
  """Extends `hashes` (the keys of tokens' first len(hashes) blocks) to every full block of
  `tokens`; returns it. Keys are blake2b digests of the parent key and the block's tokens."""
  for i in range(len(hashes), len(tokens) // block_size):
    block = np.asarray(tokens[i * block_size:(i + 1) * block_size], np.int64).tobytes()
    parent = hashes[-1] if hashes else b""
    hashes.append(hashlib.blake2b(parent + block, digest_size=16).digest())
  return hashes


class PrefixCache:
  """Cached blocks by key, with reference counts and an LRU list of unreferenced ones."""

  def __init__(self, num_blocks):
    self.entries = {}  # key -> Entry
    self.free_pool = list(range(num_blocks))[::-1]  # pop() gives the lowest free place
    self.unreferenced = collections.OrderedDict()  # key -> None, least recently released first

  def __len__(self):
    return len(self.entries)

  def match(self, hashes, limit):
    """How many of the leading `hashes` (at most `limit`) are cached."""
    n = 0
    while n < min(limit, len(hashes)) and hashes[n] in self.entries:
      n += 1
    return n

  def pin(self, key):
    """One more request holds `key`'s block; returns its Entry."""
    entry = self.entries[key]
    entry.refs += 1
    self.unreferenced.pop(key, None)
    return entry

  def unpin(self, key):
    """A request lets go of `key`'s block; with no holder left it becomes evictable (newest)."""
    entry = self.entries[key]
    if entry.refs <= 0:
      raise AssertionError(f"prefix block {key.hex()} released more often than held")
    entry.refs -= 1
    if entry.refs == 0:
      self.unreferenced[key] = None

  def add(self, key, owner):
    """Registers a newly computed block, held by its computing request (`owner`, a request id);
    returns its Entry (`pool_index` where to copy it) or None when `key` is already cached (the
    request then holds that one; its own copy is not needed)."""
    if key in self.entries:
      self.pin(key)
      return None
    entry = self.entries[key] = Entry(self.free_pool.pop(), owner)
    entry.refs = 1
    return entry

  def evict_one(self):
    """Drops the least recently released unreferenced block; False if there is none."""
    if not self.unreferenced:
      return False
    key, _ = self.unreferenced.popitem(last=False)
    self.free_pool.append(self.entries.pop(key).pool_index)
    return True

  def snapshot(self):
    """The table's state (entries, their reference counts, free pool places, LRU order), for
    `restore`."""
    return (dict(self.entries), {k: e.refs for k, e in self.entries.items()},
            list(self.free_pool), collections.OrderedDict(self.unreferenced))

  def restore(self, snap):
    """Puts back the state `snapshot` returned."""
    entries, refs, free_pool, unreferenced = snap
    self.entries, self.free_pool = dict(entries), list(free_pool)
    self.unreferenced = collections.OrderedDict(unreferenced)
    for key, entry in self.entries.items():
      entry.refs = refs[key]

  def check(self, held_keys):
    """AssertionError unless each entry's refs equal its holders in `held_keys` (one list of
    keys per running request) and the unreferenced list is exactly the entries with no holder."""
    counts = collections.Counter(k for keys in held_keys for k in keys)
    for key, entry in self.entries.items():
      assert entry.refs == counts.get(key, 0) >= 0, (key.hex(), entry.refs, counts.get(key))
      assert (entry.refs == 0) == (key in self.unreferenced), key.hex()
    assert set(counts) <= set(self.entries), "a request holds a block that is not cached"
    assert len(self.entries) + len(self.free_pool) == len(set(
        [e.pool_index for e in self.entries.values()] + self.free_pool)), "pool place reused"
