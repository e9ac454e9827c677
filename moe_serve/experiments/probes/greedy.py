"""Greedy generation through the jitted engine step: chunked prefill of a group, then decode.

The one home of the prefill/decode loop that the demo (experiments/generate_demo.py) and the
quality step runner (experiments/quality_runners.py) drive, without the engine's scheduler: prompt
i of a group goes to cache slot i and step row i; rows past the group are idle (segment id -1),
e.g. to fill a fixed slot count or a multiple of a mesh's data axis. `step` is a step function
from parallel/steps.py: (params, cache, StepBatch) -> (logits, cache, aux), cache donated.

Axis letters (docs/design.md section 2): B rows of every step (= cache slots here, at least one
per prompt), L tokens per row (the chunk length for prefill rows; a prompt's length for its
logits), V vocabulary.
"""
import numpy as np

from moe_serve.data import tokenizer
from moe_serve.model import parts


def prefill(step, params, cache, prompts_ids, chunk, rows):
  """Prefills prompt i into slot i, `chunk` tokens per step; returns (cache, logits) where
  logits[i] is prompt i's numpy [L, V] (position t predicts token t + 1), L its length."""
  pieces = [[] for _ in prompts_ids]
  for batch in parts.prefill_batches(prompts_ids, chunk, rows):
    logits, cache, _ = step(params, cache, batch)
    logits_BxLxV = np.asarray(logits["prefill"])  # one device->host copy per step
    lens_B = np.asarray(batch.prefill.segment_ids_BxL >= 0).sum(1)
    for i, piece in enumerate(pieces):
      piece.append(logits_BxLxV[i, :lens_B[i]])
  return cache, [np.concatenate(piece) for piece in pieces]


def decode(step, params, cache, first_tokens, positions, max_new_tokens, chunk, rows,
           stop_at_eos=True, eos_id=tokenizer.EOS):
  """Greedy decode of prefilled prompts from their `first_tokens` at their `positions`.

  Returns (cache, completions): completion i is a token list that starts with first_tokens[i] and
  has max_new_tokens tokens, or, with `stop_at_eos`, ends at its first `eos_id` (kept), its row
  then going idle. Idle rows feed token 0 at position 0 (padding: they touch no cache and no
  capacity). `chunk` is the (empty) prefill part's length, so the step keeps one shape.
  """
  n = len(first_tokens)
  rows_B = np.arange(rows)
  tok_B, pos_B, live_B = np.zeros(rows, np.int64), np.zeros(rows, np.int64), rows_B < n
  tok_B[:n], pos_B[:n] = first_tokens, positions
  if stop_at_eos:
    live_B[:n] &= tok_B[:n] != eos_id
  completions = [[int(t)] for t in tok_B[:n]]
  no_prefill = parts.empty_part(0, chunk)
  for _ in range(max_new_tokens - 1):
    if not live_B.any():
      break
    batch = parts.StepBatch(
        parts.decode_part(np.where(live_B, tok_B, 0), rows_B, np.where(live_B, pos_B, 0),
                          np.where(live_B, rows_B, -1)), no_prefill)
    logits, cache, _ = step(params, cache, batch)
    tok_B, pos_B = np.asarray(logits["decode"]).argmax(-1), pos_B + 1
    for i in np.nonzero(live_B)[0]:
      completions[i].append(int(tok_B[i]))
      if stop_at_eos:
        live_B[i] = tok_B[i] != eos_id
  return cache, completions


def first_tokens(prefill_logits):
  """The greedy first token of each prompt: argmax of its last prefill position."""
  return np.asarray([lg[-1].argmax() for lg in prefill_logits], np.int64)


def generate(step, params, cache, prompts_ids, max_new_tokens, chunk, rows, stop_at_eos=True,
             eos_id=tokenizer.EOS):
  """Prefill then greedy decode of one group (at most `rows` prompts); returns (cache,
  completions) as in `decode`."""
  cache, logits = prefill(step, params, cache, prompts_ids, chunk, rows)
  return decode(step, params, cache, first_tokens(logits), [len(p) for p in prompts_ids],
                max_new_tokens, chunk, rows, stop_at_eos, eos_id)
