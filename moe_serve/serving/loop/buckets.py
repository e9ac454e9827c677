"""Step shapes and batches: the buckets a step's shape is picked from, and the fixed-shape
batch built from a scheduler's plan (what serving/loop/engine.py runs).

Step shapes come from a small set of buckets (rows, chunk length, and how many cache positions
attention reads) so that `Engine.warmup` can compile them all and a warmed-up run never
compiles again.

Axis letters: B decode rows, P prefill rows, L chunk length (a step's shape is (B, P, L)).
"""
from typing import NamedTuple

import numpy as np

from moe_serve.model import parts
from moe_serve.serving.loop import sampling


class Buckets(NamedTuple):
  """Allowed step shapes: decode rows B, prefill rows P, chunk length L, and the cache
  positions attention reads, kv_len (each sorted; kv_lens always ends with the model's max_len)."""
  decode_rows: tuple
  prefill_rows: tuple
  chunk_lens: tuple
  kv_lens: tuple

  @classmethod
  def from_config(cls, b, max_len):
    """From the `serve.buckets` config section and the model's max_len."""
    rows = (tuple(sorted(int(x) for x in v)) for v in (b.decode_rows, b.prefill_rows,
                                                         b.chunk_lens))
    kv = tuple(sorted({int(x) for x in b.get("kv_lens", ())} | {int(max_len)}))
    return cls(*rows, kv)

  def pick_kv(self, positions_needed):
    """The smallest kv_len covering `positions_needed` cache positions."""
    return next(o for o in self.kv_lens if o >= positions_needed)

  def pick(self, n_decode, n_prefill, longest_chunk):
    """The smallest (B, P, L) holding that many decode rows, prefill rows and chunk tokens."""
    first_fit = lambda opts, n: next(o for o in opts if o >= n)
    return (first_fit(self.decode_rows, n_decode), first_fit(self.prefill_rows, n_prefill),
            first_fit(self.chunk_lens, longest_chunk))

  def all(self):
    """Every step shape (B, P, L) a run may use, each once (what `Engine.warmup` compiles)."""
    return [(b, p, c) for b in self.decode_rows for p in self.prefill_rows for c in self.chunk_lens
            if p > 0 or c == self.chunk_lens[0]]  # with no prefill rows L is irrelevant


class Step(NamedTuple):
  """A planned step: its plan, what `build` made of it, and the scheduler's state then."""
  plan: object  # scheduler.Plan
  shape: tuple  # (B, P, L)
  batch: parts.StepBatch  # numpy
  samp: sampling.SamplingBatch
  kv: int  # attended_kv
  kv_len: int
  start: float  # virtual time
  blocks_in_step: int
  t_host: float  # perf_counter when planning began
  blocks_cached: int = 0  # of blocks_in_step, held by the prefix cache


def build(plan, buckets):
  """(shape (B, P, L), StepBatch, SamplingBatch, attended_kv, kv_len) of a plan (scheduler.Plan),
  its rows in the plan's order and padded to the smallest bucket that holds them."""
  # One request per row is what the step's `sequence`-scope expert buffers are sized by; each
  # row below is filled from one request, so only a request in two rows could break it.
  parts.check_distinct_requests([s.req.id for s in plan.decode] +
                                [s.req.id for s, _ in plan.prefill])
  longest = max((n for _, n in plan.prefill), default=1)
  b, p, c = buckets.pick(len(plan.decode), len(plan.prefill), longest)
  d_tok, d_slot, d_pos, d_seg = (np.zeros(b, np.int32) for _ in range(4))
  d_seg -= 1
  p_tok = np.zeros((p, c), np.int32)
  p_slot, p_start, p_len, p_seg = (np.zeros(p, np.int32) for _ in range(4))
  p_seg -= 1
  samp = sampling.SamplingBatch.padding(b, p)
  kv = 0  # attended_kv: each real token attends to its position + 1 keys
  held = 1  # cache positions the step's attention must read (its longest row's end)
  for i, seq in enumerate(plan.decode):
    n = seq.num_computed
    d_tok[i], d_slot[i], d_pos[i], d_seg[i] = seq.tokens[-1], seq.slot, n, seq.req.id
    samp.set_row(i, seq.req.sampling, n + 1)
    kv += n + 1
    held = max(held, n + 1)
  for j, (seq, n) in enumerate(plan.prefill):
    start = seq.num_computed
    p_tok[j, :n] = seq.tokens[start:start + n]
    p_slot[j], p_start[j], p_len[j], p_seg[j] = seq.slot, start, n, seq.req.id
    samp.last_P[j] = n - 1
    samp.set_row(b + j, seq.req.sampling, start + n)
    kv += n * start + n * (n + 1) // 2
    held = max(held, start + n)
  batch = parts.StepBatch(parts.decode_part(d_tok, d_slot, d_pos, d_seg),
                          parts.chunk_part(p_tok, p_slot, p_start, p_len, p_seg))
  return (b, p, c), batch, samp, kv, buckets.pick_kv(held)

