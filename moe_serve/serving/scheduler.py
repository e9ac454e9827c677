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
"""
import bisect
import heapq
from typing import NamedTuple

from moe_serve import config as config_lib
from moe_serve.serving.request import Request
from moe_serve.serving.sequence import Seq

POLICIES = config_lib.SERVE_POLICIES


def policy_key(req: Request, policy):
  """Sort key (smaller runs first); ends with the id so it is unique and deterministic."""
  if policy == "fcfs":
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

  def _free(self, slot, blocks):
    heapq.heappush(self.free_slots, slot)
    self.free_blocks += blocks

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
      need = self._blocks_for(seq.num_computed + 1) - seq.blocks
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

    admitted = []
    if not preempted and (self.batching == "continuous" or static_idle):
      while self.waiting and self.free_slots:
        seq = self.waiting[0]
        need = self._blocks_for(len(seq.tokens))
        if need > self.free_blocks:
          break
        heapq.heappop(self.waiting)
        seq.admit(heapq.heappop(self.free_slots), need, now)
        self.free_blocks -= need
        bisect.insort(self.running, seq, key=lambda s: s.key)
        admitted.append(seq)

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
    return Plan(decode, prefill, admitted, preempted)

  def check_invariants(self):
    """Raises AssertionError if slots or blocks are double-booked or over budget (for tests)."""
    slots = [s.slot for s in self.running]
    assert len(set(slots)) == len(slots) and -1 not in slots, f"slots double-booked: {slots}"
    assert not set(slots) & set(self.free_slots), "a running request's slot is also free"
    held = sum(s.blocks for s in self.running)
    assert held == self.blocks_used <= self.num_blocks, (held, self.blocks_used, self.num_blocks)
    for s in self.running:
      assert s.blocks * self.block_size >= s.num_computed, "request holds too few blocks"
