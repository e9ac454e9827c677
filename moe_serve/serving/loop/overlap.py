"""What the overlapped engine loop (serve.overlap) needs beside the loop itself.

With overlap, the engine plans and launches step N+1 before it has read step N's tokens: it
applies step N to its state with a placeholder for every sampled token (no EOS, durations
guessed), plans and builds step N+1 from that, puts its state back (`plan_ahead`: the scheduler
with its sequences and prefix cache, the clock and the run state each own a
`snapshot`/`restore`), and launches step N+1 with the decode rows' tokens taken from step N's
sampled tokens on the device (`Feed`). When step N's tokens arrive it applies them for real and
plans step N+1 again; the launched step is kept only if its batch is the one that plan builds
(`same_step`), else it is dropped and the right one launched (a miss: an EOS, or a guessed
duration that let a request in early or late). So every kept step is exactly the step the plain
loop would have run, and every record is the same.

A dropped step has written cache positions it did not own by the time it is dropped: a finished
request's next position, or a slot the real plan gives someone else. Nothing reads them: every
request writes a position before it attends to it, and attention never reads past a row's end.
serve.prefix_cache is refused with overlap (config.py) for the device side, not the host state:
a step launched ahead could load a cached block that the step before registered but whose copy
into the pool runs only once that step is read.

The loop itself is Engine._overlapped_loop (serving/loop/engine.py); this module holds its helpers.

Axis letters: B decode rows, R sampled rows of the step before (parts: decode rows, then
prefill rows).
"""
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


class Feed:
  """The overlapped loop's device side: a step's decode tokens taken from the sampled tokens of
  the step before, still on the device (`feed`). Single-process only."""

  def __init__(self):
    if jax.process_count() > 1:
      raise ValueError("serve.overlap is single-process only: every process would have to "
                       "drop the same steps launched ahead; set serve.overlap=false")
    # `feed`'s `prev` when no step before is in flight: committed, like a step's tokens.
    self.no_prev = jax.device_put(np.zeros(1, np.int32), jax.devices()[0])

  def batch(self, batch, prev_tokens_R=None):
    """`batch` (a StepBatch) with its decode tokens fed from `prev_tokens_R` (None: none)."""
    prev = self.no_prev if prev_tokens_R is None else prev_tokens_R
    return batch._replace(decode=batch.decode._replace(tokens_BxL=feed(
        prev, batch.decode.tokens_BxL)))

  def warm(self, sampled, decode_rows):
    """Compiles `feed` from each warm-up step's sampled tokens [R] (`sampled`, one per R) to
    every decode row count B."""
    for prev in sampled:
      for b in decode_rows:
        jax.block_until_ready(feed(prev, np.zeros((b, 1), np.int32)))


class _NoFeed:
  """The plain loop's: batches go to the step as built (host tokens); nothing to compile."""

  def batch(self, batch, prev_tokens_R=None):
    del prev_tokens_R
    return batch

  def warm(self, sampled, decode_rows):
    del sampled, decode_rows


NO_FEED = _NoFeed()


def plan_ahead(sched, clock, state, apply_placeholders, plan_next):
  """`plan_next()` on the state that `apply_placeholders()` leaves; the scheduler (with its
  sequences and prefix cache), the clock and the run state are then put back as they were."""
  saved = sched.snapshot(), clock.now, state.snapshot()
  try:
    apply_placeholders()
    return plan_next()
  finally:
    sched.restore(saved[0])
    clock.now = saved[1]
    state.restore(saved[2])


def guess_dt(clock, step_cost, step, last_dt, last_kept):
  """The duration step (buckets.Step) will likely get: the cost model's with the kept pairs of
  the last step read (`last_kept`), or that step's duration (`last_dt`, measured clock)."""
  if clock.mode != "cost_model":
    return last_dt
  return clock.step_duration(step_cost.features(step.shape, step.kv_len, last_kept), 0.0)


def same_step(ahead, step, prev_tokens_R):
  """Whether the step launched ahead (buckets.Step) computes exactly what `step` (planned from
  the real state) asks for, its placeholders read from the step before's sampled tokens (equal
  inputs also mean an equal kv_len: it follows the rows' positions)."""
  decode = ahead.batch.decode
  fed = ahead.batch._replace(decode=decode._replace(tokens_BxL=resolve(
      decode.tokens_BxL, prev_tokens_R)))
  return same_batch((fed, ahead.samp), (step.batch, step.samp))


def wall_times(t_ready, last_ready, t_launch, idle_from):
  """A step's (step_s, host_s): the interval since the step before was read (or since its own
  launch, if first), host_s being an upper bound of the part in which the device had nothing
  queued before this step's launch (`idle_from`: since when it may have had none; None: the
  step before was still running)."""
  interval = t_ready - (last_ready or t_launch)
  host_s = 0.0 if idle_from is None else min(max(t_launch - idle_from, 0.0), interval)
  return interval - host_s, host_s
