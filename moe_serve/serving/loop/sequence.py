"""One admitted request's life in the engine, and the only code that changes its state.

    waiting --admit--> prefilling --advance_prefill (last chunk)--> decoding --finish--> done
       ^                   |                                            |
       +------------------ preempt (recompute) -------------------------+

`tokens` is prompt + outputs so far; `num_computed` counts the tokens whose keys/values are in
the slot. A prefill chunk advances `num_computed` by its length; when the whole of `tokens` is in
the cache the chunk's last logits give the first output token (`prefilled`). From then on each
decode step writes `tokens[-1]` (advance_decode) and appends the next output. A preemption frees
the slot and blocks and forgets every computed key/value, keeping the outputs: re-admitted, the
request prefills prompt + outputs again and resamples the same tokens (serving/loop/sampling.py keys
on the position). The scheduler calls admit/reserve/release/preempt, the engine the rest.

`snapshot`/`restore` put every field back (serve.overlap plans a step ahead on a copy of the
state, serving/loop/overlap.py): the lists in `_GROWN` only ever grow and are restored by length;
every other field is restored by value, so the methods below assign those, never mutate them.
"""
import dataclasses

from moe_serve.serving.stream.request import Request


@dataclasses.dataclass(eq=False)
class Seq:
  """The engine's state of one admitted request (see the module docstring)."""
  req: Request
  key: tuple  # the scheduling policy's sort key (scheduler.policy_key); unique
  tokens: list  # prompt + outputs so far
  num_computed: int = 0  # tokens whose keys/values are in the slot
  slot: int = -1
  blocks: int = 0  # KV blocks held
  prefilled: bool = False  # every token but the last sampled one is in the cache
  outputs: list = dataclasses.field(default_factory=list)
  logprobs: list = dataclasses.field(default_factory=list)
  token_times: list = dataclasses.field(default_factory=list)
  preemptions: int = 0
  admitted_at: float | None = None  # first admission
  finish_reason: str | None = None
  drops: list | None = None  # per MoE layer, when routing is recorded
  prompt_logprobs: list = dataclasses.field(default_factory=list)  # when serve.prompt_logprobs
  # serve.prefix_cache (serving/loop/prefix_cache.py): keys of the full blocks of `tokens` (a chain,
  # extended as tokens grow), the cached blocks this request holds (its first len(shared)
  # blocks; the rest of `blocks` is its own), and the tokens its first admission found cached.
  block_keys: list = dataclasses.field(default_factory=list)
  shared: list = dataclasses.field(default_factory=list)
  cached_tokens: int | None = None
  cached_from: list | None = None  # per cached block then, the request whose step computed it

  @classmethod
  def waiting(cls, req: Request, key):
    """A request that has not run yet: its tokens are its prompt."""
    return cls(req=req, key=key, tokens=list(req.prompt))

  def __lt__(self, other):  # heap ties never happen (keys are unique); keep heapq total
    return self.key < other.key

  # ------------------------------------------------------------------ scheduler side
  def admit(self, slot, blocks, now, shared=(), block_size=0, owners=()):
    """Takes `slot` and `blocks` KV blocks of its own; with `shared` (keys of cached blocks it
    now holds, its first ones, computed in the steps of requests `owners`) those blocks' tokens
    count as computed. The first admission's time and cache hit are kept."""
    self.slot, self.blocks = slot, blocks
    self.shared = list(shared)
    self.num_computed = len(shared) * block_size
    if self.admitted_at is None:
      self.admitted_at, self.cached_tokens = now, self.num_computed
      self.cached_from = list(owners)

  def reserve(self, blocks):
    """Holds `blocks` more KV blocks (for the next decode token)."""
    self.blocks += blocks

  def release(self):
    """Gives up the slot and blocks; returns (slot, own blocks, keys of the shared ones) for the
    scheduler's free lists."""
    held = self.slot, self.blocks, self.shared
    self.slot, self.blocks, self.shared = -1, 0, []
    return held

  def share(self, key):
    """One of its own blocks, now complete, is held as the cached block `key` instead."""
    self.shared = self.shared + [key]  # assigned, not appended: see `snapshot`
    self.blocks -= 1

  def preempt(self):
    """Recompute preemption: releases (returned as in `release`) and forgets every computed
    key/value; the outputs stay, to be prefilled again with the prompt."""
    held = self.release()
    self.num_computed, self.prefilled = 0, False
    self.preemptions += 1
    return held

  def next_chunk_len(self, chunk_size):
    """Tokens the next prefill chunk computes: min(chunk_size, tokens not yet computed)."""
    return min(chunk_size, len(self.tokens) - self.num_computed)

  # ------------------------------------------------------------------ engine side
  def advance_prefill(self, n):
    """A chunk of `n` tokens was computed; True when it ended the prefill (a token is due)."""
    self.num_computed += n
    if self.num_computed == len(self.tokens):
      self.prefilled = True
    return self.prefilled

  def advance_decode(self):
    """The decode row's token (tokens[-1]) was written to the cache."""
    self.num_computed += 1

  def append_output(self, token, logprob, now):
    """Appends a sampled token, produced at virtual time `now`."""
    self.tokens.append(token)
    self.outputs.append(token)
    self.logprobs.append(logprob)
    self.token_times.append(now)

  def add_drops(self, per_layer):
    """Adds this step's dropped (token, choice) counts per MoE layer."""
    self.drops = per_layer if self.drops is None else [a + g for a, g in zip(self.drops, per_layer)]

  def add_prompt_logprobs(self, values):
    """Appends log p(prompt[q] | prompt[:q]) for the next prompt positions q scored."""
    self.prompt_logprobs.extend(values)

  def finish(self, reason):
    """Marks the request done ('eos' or 'length'); the scheduler has released it."""
    self.finish_reason = reason

  # ------------------------------------------------------------------ planning ahead
  def snapshot(self):
    """Every field's state, for `restore` (see the module docstring)."""
    return (tuple(getattr(self, f) for f in _VALUES), tuple(len(getattr(self, f)) for f in _GROWN))

  def restore(self, snap):
    """Puts back the state `snapshot` returned: grown lists cut back, the rest reassigned."""
    values, lengths = snap
    for name, value in zip(_VALUES, values):
      setattr(self, name, value)
    for name, n in zip(_GROWN, lengths):
      del getattr(self, name)[n:]


# Lists that only grow (appended or extended, never reassigned or shortened).
_GROWN = ("tokens", "outputs", "logprobs", "token_times", "prompt_logprobs", "block_keys")
# The rest, request and key aside (never change): restored by value.
_VALUES = tuple(f.name for f in dataclasses.fields(Seq) if f.name not in _GROWN + ("req", "key"))
