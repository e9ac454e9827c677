"""A numpy stand-in for the model step, for fast scheduler/engine property tests.

The fake keeps, per slot, the tokens written at each position (its "KV cache"). A token's
logits are one-hot at `next_token(prefix)`, where the prefix is read back from the slot's
positions 0..p: a wrong position, a skipped write, or state left in a reused slot changes the
outputs, so comparing a run with `expected_completion` checks the engine's bookkeeping.

Axis letters: S slots, L positions in a slot, V vocabulary.
"""
import numpy as np

from moe_serve.data.tokenizer import EOS

_PRIME = 1_000_003


def next_token(prefix, vocab_size):
  h = 7
  for t in prefix:
    h = (h * 31 + int(t) + 1) % _PRIME
  return EOS if h % 11 == 0 else 3 + h % (vocab_size - 3)


def expected_completion(prompt, max_new_tokens, vocab_size, eos=True):
  seq, out = list(prompt), []
  while len(out) < max_new_tokens:
    t = next_token(seq, vocab_size)
    out.append(t)
    seq.append(t)
    if eos and t == EOS:
      break
  return out


class FakeModel:
  """step(params, cache, batch) -> (logits, cache, aux), like parallel/steps.make_step_fn."""

  def __init__(self, num_slots, max_len, vocab_size):
    self.vocab_size = vocab_size
    self.store_SxL = np.full((num_slots, max_len), -1, np.int64)
    self.calls = 0

  def init_cache(self):
    return {"fake": np.zeros(())}

  def _part(self, part):
    toks, pos, seg = (np.asarray(a) for a in part[:3])
    slots = np.asarray(part.slots_B)
    b, length = toks.shape
    logits = np.zeros((b, length, self.vocab_size), np.float32)
    for i in range(b):
      for j in range(length):
        if seg[i, j] >= 0:
          self.store_SxL[slots[i], pos[i, j]] = toks[i, j]
    for i in range(b):
      for j in range(length):
        if seg[i, j] >= 0:
          prefix = self.store_SxL[slots[i], :pos[i, j] + 1]
          assert (prefix >= 0).all(), "read a position that was never written"
          logits[i, j, next_token(prefix, self.vocab_size)] = 10.0
    return logits

  def __call__(self, params, cache, batch, kv_len=None):
    del params, kv_len
    self.calls += 1
    dec = self._part(batch.decode)
    pre = self._part(batch.prefill)
    return {"decode": dec[:, 0], "prefill": pre}, cache, {}


class FakePool:
  """serving/prefix_pool.Pool for FakeModel: copies a block's written tokens (the fake's keys
  and values) between its slot store and a dict of pool places."""

  def __init__(self, model, block_size):
    self.model, self.block_size, self.places = model, block_size, {}
    self.saved = self.loaded = 0

  def _span(self, block):
    return slice(block * self.block_size, (block + 1) * self.block_size)

  def save(self, cache, copies):
    for slot, block, place in copies:
      self.places[place] = self.model.store_SxL[slot, self._span(block)].copy()
      self.saved += 1

  def load(self, cache, copies):
    for slot, block, place in copies:
      self.model.store_SxL[slot, self._span(block)] = self.places[place]
      self.loaded += 1
    return cache

  def warm(self, cache, max_copies):
    del max_copies
    return cache


def apply_plan(sched, plan, token):
  """What the engine does with a step's plan once it ran, every sampled token `token`: advance
  each request, register its completed prefix blocks, append the token (finishing requests at
  max_new_tokens); then the scheduler's books must hold."""
  def emit(seq):
    seq.append_output(token, 0.0, 0.0)
    if len(seq.outputs) == seq.req.max_new_tokens:
      sched.finish(seq, "length")
  for seq in plan.decode:
    seq.advance_decode()
    sched.computed(seq)
    emit(seq)
  for seq, n in plan.prefill:
    done = seq.advance_prefill(n)
    sched.computed(seq)
    if done:
      emit(seq)
  sched.check_invariants()
