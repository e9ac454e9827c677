"""What the overlapped engine loop (serve.overlap) needs beside the loop itself.

With overlap, the engine plans and launches step N+1 before it has read step N's tokens: it
applies step N to its state with a placeholder for every sampled token (no EOS, durations
guessed), plans and builds step N+1 from that, launches it with the decode rows' tokens taken
from step N's sampled tokens on the device (`feed`), and then puts its state back
(`Snapshot`). When step N's tokens arrive it applies them for real and plans step N+1 again;
the launched step is kept only if its batch is the one that plan builds (`same_batch`), else it
is dropped and the right one launched (a miss: an EOS, or a guessed duration that let a request
in early or late). So every kept step is exactly the step the plain loop would have run, and
every record is the same.

A dropped step has written cache positions it did not own by the time it is dropped: a finished
request's next position, or a slot the real plan gives someone else. Nothing reads them: every
request writes a position before it attends to it, and attention never reads past a row's end.

Axis letters: B decode rows, R sampled rows of the step before (parts: decode rows, then
prefill rows).
"""
import operator

import jax
import jax.numpy as jnp
import numpy as np


def placeholder(row):
  """The token a sequence holds for the one its step's sampled row `row` has not yet returned."""
  return -1 - row


def resolve(tokens_Bx1, prev_tokens_R, xp=np):
  """The decode rows' input tokens: a placeholder (< 0) becomes the previous step's sampled
  token of that row; real tokens stay. `xp`: numpy (host) or jax.numpy (`feed`)."""
  src_Bx1 = xp.clip(-1 - tokens_Bx1, 0, prev_tokens_R.shape[0] - 1)
  return xp.where(tokens_Bx1 < 0, xp.take(prev_tokens_R, src_Bx1), tokens_Bx1)


@jax.jit
def feed(prev_tokens_R, tokens_Bx1):
  """`resolve` on the device, where the previous step's sampled tokens are."""
  return resolve(tokens_Bx1, prev_tokens_R, jnp)


def same_batch(a, b):
  """Whether two steps' (StepBatch, SamplingBatch) numpy inputs are equal, field by field."""
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(x.shape == y.shape and np.array_equal(x, y)
                                  for x, y in zip(leaves_a, leaves_b))


# The Seq fields the scheduler and the engine set (`append_output`'s lists are truncated).
_FIELD_NAMES = ("num_computed", "slot", "blocks", "prefilled", "preemptions", "admitted_at",
                "finish_reason")
_FIELDS = operator.attrgetter(*_FIELD_NAMES)


class Snapshot:
  """The engine state that applying a step and planning the next one can change: the
  scheduler's queues, slots and blocks, its sequences' fields, the outputs of the sequences in
  `applied` (the step's), the clock, and the run's counters (`counters`: a dict whose ints are
  restored by value and whose lists only grow, restored by truncation)."""

  def __init__(self, sched, clock, counters, applied):
    self.sched, self.clock, self.counters = sched, clock, counters
    self.queues = (list(sched.free_slots), sched.free_blocks, list(sched.waiting),
                   list(sched.running))
    self.now = clock.now
    self.counts = {k: (len(v) if isinstance(v, list) else v) for k, v in counters.items()
                   if isinstance(v, (int, list))}
    self.fields = [(s, _FIELDS(s)) for s in (*sched.waiting, *sched.running)]
    self.lengths = [(s, len(s.tokens), len(s.outputs)) for s in applied]

  def restore(self):
    """Puts everything captured back (the counters dict is updated in place)."""
    s = self.sched
    s.free_slots, s.free_blocks, s.waiting, s.running = (
        list(self.queues[0]), self.queues[1], list(self.queues[2]), list(self.queues[3]))
    self.clock.now = self.now
    for k, v in self.counts.items():
      if isinstance(self.counters[k], list):
        del self.counters[k][v:]
      else:
        self.counters[k] = v
    for seq, values in self.fields:
      for name, value in zip(_FIELD_NAMES, values):
        setattr(seq, name, value)
    for seq, n_tokens, n_outputs in self.lengths:
      del seq.tokens[n_tokens:]
      for grown in (seq.outputs, seq.logprobs, seq.token_times):
        del grown[n_outputs:]
