"""Iteration-level scheduler: which requests run in the next step, and with how many tokens.

Each step, in this order:
1. every running request past its prefill gets a decode row; if the simulated KV memory (blocks
   of `kv_block_size` tokens) cannot hold its next token, the lowest-ranked running requests are
   preempted (recompute: their slot and blocks are freed, they return to the waiting queue and
   later prefill prompt + tokens so far again);
2. waiting requests are admitted in policy order while a slot and blocks for their whole current
   prefix are free (`continuous`), or only when nothing runs (`static`: fill a batch, run it to
   completion); the head of the queue is never overtaken, and nothing is admitted in a step that
   preempted;
3. running requests still prefilling get prefill rows in policy order, one chunk of
   min(chunk_size, remaining) tokens each, while rows and `max_num_batched_tokens` allow.
Chunk boundaries depend only on the request (never on load), so a request's prefill is the
same computation whatever else is running.

With serve.prefix_cache (serving/loop/prefix_cache.py) an admitted request first takes the longest
run
of its leading full blocks that is cached (never its last token: that one must run to give
logits) and prefills from there: the plan lists the blocks to copy into its slot (`loads`);
after a step the engine calls `computed` for each request in it, which registers its newly
complete blocks (`saves`: copies into the pool). Cached blocks no request holds are evicted
(least recently released first) before anything is preempted or an admission waits. Policy
`lpm` admits the request with the most cached blocks first (SGLang's longest prefix match;
ties in arrival order).
"""
import bisect
import heapq
from typing import NamedTuple

from moe_serve import config as config_lib
from moe_serve.serving.loop import prefix_cache as prefix_lib
from moe_serve.serving.stream.request import Request
from moe_serve.serving.loop.sequence import Seq

POLICIES = config_lib.SERVE_POLICIES


def policy_key(req: Request, policy):
  """Sort key (smaller runs first); ends with the id so it is unique and deterministic."""
  if policy in ("fcfs", "lpm"):  # lpm: fcfs among equal cached prefixes (Scheduler._admit)
    return (req.arrival, req.id)
  if policy == "priority":
    return (req.priority, req.arrival, req.id)
  if policy == "sjf":
    return (len(req.prompt) + req.max_new_tokens, req.arrival, req.id)
  raise ValueError(f"serve.policy={policy!r} is not one of {list(POLICIES)}")


class Plan(NamedTuple):
  """One step's work; decode and prefill rows in policy order."""
  decode: list  # Seqs, each feeding tokens[-1] at position num_computed
  prefill: list  # (Seq, n): tokens[num_computed : num_computed + n]
  admitted: list
  preempted: list
  loads: tuple = ()  # prefix cache: (slot, block index, pool index) copied in before the step


class Scheduler:
  """Owns slots, KV blocks, the waiting queue and the running set."""

  def __init__(self, serve_cfg, max_prefill_rows, chunk_size):
    s = serve_cfg
    self.policy, self.batching = s.policy, s.batching
    self.max_num_seqs, self.max_tokens = s.max_num_seqs, s.max_num_batched_tokens
    self.block_size, self.num_blocks = s.kv_block_size, s.kv_num_blocks
    self.max_prefill_rows, self.chunk_size = max_prefill_rows, chunk_size
    self.free_slots = list(range(s.max_num_seqs))  # a min-heap: the lowest free slot is reused
    self.free_blocks = s.kv_num_blocks
    self.waiting = []  # heap of Seqs by key
    self.running = []  # Seqs sorted by key
    self.cache = prefix_lib.PrefixCache(s.kv_num_blocks) if s.get("prefix_cache") else None
    self.saves = []  # prefix cache: (slot, block index, pool index) to copy out after a step

  # ------------------------------------------------------------------ queue
  def add(self, req: Request):
    """Queues a new request; returns its Seq."""
    seq = Seq.waiting(req, policy_key(req, self.policy))
    heapq.heappush(self.waiting, seq)
    return seq

  def has_work(self):
    """Whether anything waits or runs."""
    return bool(self.waiting or self.running)

  @property
  def blocks_used(self):
    """KV blocks held by running requests."""
    return self.num_blocks - self.free_blocks

  def _blocks_for(self, num_tokens):
    return -(-num_tokens // self.block_size)

  def _free(self, slot, blocks, shared):
    heapq.heappush(self.free_slots, slot)
    self.free_blocks += blocks
    for key in shared:
      self.cache.unpin(key)

  def _make_room(self, need):
    """Evicts unreferenced cached blocks until `need` blocks are free or none is left."""
    while need > self.free_blocks and self.cache is not None and self.cache.evict_one():
      self.free_blocks += 1

  @property
  def blocks_cached(self):
    """KV blocks held by the prefix cache (referenced or not); part of blocks_used."""
    return len(self.cache) if self.cache is not None else 0

  def _preempt(self, seq):
    self._free(*seq.preempt())
    heapq.heappush(self.waiting, seq)

  def finish(self, seq, reason):
    """Frees a finished request's slot and blocks."""
    self.running.remove(seq)
    self._free(*seq.release())
    seq.finish(reason)

  # ------------------------------------------------------------------ one step
  def schedule(self, now) -> Plan:
    """Decides the next step (see the module docstring). Mutates slots, blocks and queues."""
    static_idle = not self.running
    decode, preempted, kept = [], [], []
    queue = list(self.running)
    while queue:
      seq = queue.pop(0)
      if not seq.prefilled:
        kept.append(seq)
        continue
      need = self._blocks_for(seq.num_computed + 1) - seq.blocks - len(seq.shared)
      self._make_room(need)
      while need > self.free_blocks and queue:
        victim = queue.pop()  # lowest-ranked of those not yet served this step
        self._preempt(victim)
        preempted.append(victim)
      if need > self.free_blocks:
        self._preempt(seq)
        preempted.append(seq)
        continue
      self.free_blocks -= need
      seq.reserve(need)
      decode.append(seq)
      kept.append(seq)
    self.running = kept

    admitted, loads = [], []
    if not preempted and (self.batching == "continuous" or static_idle):
      self._admit(now, admitted, loads)

    budget = self.max_tokens - len(decode)
    prefill = []
    for seq in self.running:
      if seq.prefilled:
        continue
      n = seq.next_chunk_len(self.chunk_size)
      if len(prefill) == self.max_prefill_rows or n > budget:
        break  # strict policy order: a later request never takes the place of an earlier one
      prefill.append((seq, n))
      budget -= n
    return Plan(decode, prefill, admitted, preempted, loads)

  def _admit(self, now, admitted, loads):
    """Admits waiting requests in policy order (lpm: most cached blocks first) while a slot and
    blocks are free; a request's cached blocks are pinned and listed in `loads`."""
    order = None
    if self.policy == "lpm":
      hits = {id(q): self._hit(q)[0] for q in self.waiting}
      order = sorted(self.waiting, key=lambda q: (-hits[id(q)], q.key))
    while self.waiting and self.free_slots:
      seq = order[0] if order is not None else self.waiting[0]
      hit, keys = self._hit(seq)
      for key in keys[:hit]:
        self.cache.pin(key)
      need = self._blocks_for(len(seq.tokens)) - hit
      self._make_room(need)
      if need > self.free_blocks:
        for key in keys[:hit]:
          self.cache.unpin(key)
        break
      if order is not None:
        order.pop(0)
        self.waiting.remove(seq)
        heapq.heapify(self.waiting)
      else:
        heapq.heappop(self.waiting)
      slot = heapq.heappop(self.free_slots)
      seq.admit(slot, need, now, keys[:hit], self.block_size,
                [self.cache.entries[k].owner for k in keys[:hit]])
      loads += [(slot, i, self.cache.entries[k].pool_index) for i, k in enumerate(keys[:hit])]
      self.free_blocks -= need
      bisect.insort(self.running, seq, key=lambda s: s.key)
      admitted.append(seq)

  def _hit(self, seq):
    """(cached leading blocks a new admission of `seq` may take, its block keys)."""
    if self.cache is None:
      return 0, []
    keys = prefix_lib.chain(seq.tokens, self.block_size, seq.block_keys)
    return self.cache.match(keys, (len(seq.tokens) - 1) // self.block_size), keys

  def computed(self, seq):
    """After a step: registers `seq`'s blocks completed by it (prefix cache only), queueing a
    copy into the pool (`saves`) for each new one. Call before `finish`."""
    if self.cache is None:
      return
    keys = prefix_lib.chain(seq.tokens, self.block_size, seq.block_keys)
    for i in range(len(seq.shared), seq.num_computed // self.block_size):
      entry = self.cache.add(keys[i], seq.req.id)
      seq.share(keys[i])
      if entry is None:  # already cached: its own copy is freed
        self.free_blocks += 1
      else:
        self.saves.append((seq.slot, i, entry.pool_index))

  def adopt(self, cache):
    """Starts with another scheduler's cached blocks (a warm prefix cache), none of them held
    any longer (held ones are let go: their requests are gone)."""
    for entry in cache.entries.values():
      entry.refs = 0
    cache.unreferenced.update((k, None) for k in cache.entries if k not in cache.unreferenced)
    self.cache = cache
    self.free_blocks -= len(cache)

  def take_saves(self):
    """The copies `computed` queued since the last call."""
    saves, self.saves = self.saves, []
    return saves

  # ------------------------------------------------------------------ planning ahead
  def snapshot(self):
    """Everything `add`, `schedule`, `computed` and `finish` change, for `restore`: free slots
    and blocks, the queues, each queued or running request's Seq, the prefix cache's table and
    its queued saves. (serve.overlap plans a step ahead on this state and puts it back,
    serving/loop/overlap.py; it still refuses serve.prefix_cache for the device side: a step
    launched ahead could load a block the step before registers but has not yet saved.)"""
    seqs = [(s, s.snapshot()) for s in (*self.waiting, *self.running)]
    cache = self.cache.snapshot() if self.cache is not None else None
    return (list(self.free_slots), self.free_blocks, list(self.waiting), list(self.running),
            seqs, cache, list(self.saves))

  def restore(self, snap):
    """Puts back the state `snapshot` returned (requests added since are forgotten)."""
    free_slots, self.free_blocks, waiting, running, seqs, cache, saves = snap
    self.free_slots, self.waiting, self.running = list(free_slots), list(waiting), list(running)
    self.saves = list(saves)
    for seq, seq_snap in seqs:
      seq.restore(seq_snap)
    if cache is not None:
      self.cache.restore(cache)

  def check_invariants(self):
    """Raises AssertionError if slots or blocks are double-booked or over budget (for tests)."""
    slots = [s.slot for s in self.running]
    assert len(set(slots)) == len(slots) and -1 not in slots, f"slots double-booked: {slots}"
    assert not set(slots) & set(self.free_slots), "a running request's slot is also free"
    held = sum(s.blocks for s in self.running) + self.blocks_cached
    assert held == self.blocks_used <= self.num_blocks, (held, self.blocks_used, self.num_blocks)
    for s in self.running:
      assert s.blocks >= 0, "request holds a negative block count"
      assert (s.blocks + len(s.shared)) * self.block_size >= s.num_computed, "too few blocks"
    if self.cache is not None:
      self.cache.check([s.shared for s in self.running])
