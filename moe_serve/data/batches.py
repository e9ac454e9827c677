"""Packs examples into fixed-shape training batches, one batch per step, reproducible per step.

Each example becomes `BOS prompt answer EOS`; inputs are its tokens but the last, targets its tokens
but the first. Examples are packed back to back into rows of length L with a distinct segment id
each (attention never crosses them); the rest of a row is padding (segment id -1, weight 0).
Loss falls on the answer and EOS only: task prompts are random by construction, and a held-out
text example is scored on its continuation; training text examples have an empty prompt.
"""
from typing import NamedTuple

import numpy as np

from moe_serve.data import tasks, tokenizer
from moe_serve.data.corpus import DOMAINS

_MIN_TEXT_TOKENS = 16  # a shorter leftover at the end of a row is not given to text
_FILL_TRIES = 4  # task draws tried for a row's leftover before it is left as padding


class Batch(NamedTuple):
  tokens_BxL: np.ndarray  # int32 inputs
  targets_BxL: np.ndarray  # int32 next tokens
  weights_BxL: np.ndarray  # float32 loss weight (0 on padding and task prompts)
  segment_ids_BxL: np.ndarray  # int32, -1 = padding
  domains_BxL: np.ndarray  # int32 index into corpus.DOMAINS, -1 = padding


def encode_example(ex):
  """(inputs, targets, weights) of one example, all of length len(ids) - 1."""
  prompt = tokenizer.encode(ex.prompt, bos=True)
  answer = tokenizer.encode(ex.answer, bos=False, eos=True)
  ids = np.asarray(prompt + answer, np.int32)
  weights = np.ones(len(ids) - 1, np.float32)
  weights[:len(prompt) - 1] = 0.0  # no loss on predicting the prompt: only answer and EOS
  return ids[:-1], ids[1:], weights


def pack(examples, batch_size, seq_len):
  """Packs `examples` in order into a Batch; raises if one does not fit in a row."""
  out = Batch(*(np.zeros((batch_size, seq_len), dt) for dt in
                (np.int32, np.int32, np.float32, np.int32, np.int32)))
  out.segment_ids_BxL[:] = -1
  out.domains_BxL[:] = -1
  row, col = 0, 0
  for seg, ex in enumerate(examples):
    inp, tgt, w = encode_example(ex)
    if len(inp) > seq_len:
      raise ValueError(f"{ex.domain} example of {len(inp)} tokens exceeds seq_len={seq_len}")
    if col + len(inp) > seq_len:
      row, col = row + 1, 0
    if row == batch_size:
      raise ValueError(f"{len(examples)} examples do not fit in {batch_size} rows of {seq_len}")
    sl = slice(col, col + len(inp))
    out.tokens_BxL[row, sl], out.targets_BxL[row, sl], out.weights_BxL[row, sl] = inp, tgt, w
    out.segment_ids_BxL[row, sl] = seg
    out.domains_BxL[row, sl] = DOMAINS.index(ex.domain)
    col += len(inp)
  return out


def _cut_text(ex, tokens):
  """A text example cut to at most `tokens` tokens of input (characters are bytes here or more)."""
  answer = ex.answer[:tokens]
  while len(tokenizer.encode(answer, bos=True, eos=True)) - 1 > tokens:
    answer = answer[:-1]
  return ex.__class__(ex.domain, ex.prompt, answer)


def sample_examples(corpus, rng, mixture, batch_size, seq_len, text_chars):
  """Draws examples by domain `mixture` weights until the rows are full.

  Text windows are `text_chars` characters (cut to the room left in the row). When a draw does
  not fit, a few task examples are tried for the leftover before the row is closed: filling it
  with text instead would let text dominate the loss (task loss sits on short answers only).
  """
  names = sorted(mixture)
  probs = np.asarray([mixture[d] for d in names], np.float64)
  probs /= probs.sum()
  task_names = [d for d in names if d in tasks.TASK_DOMAINS and mixture[d] > 0]
  examples = []
  for _ in range(batch_size):
    free = seq_len
    while True:
      ex = corpus.sample(rng, names[int(rng.choice(len(names), p=probs))], text_chars)
      if not ex.is_task:
        ex = _cut_text(ex, free) if free >= _MIN_TEXT_TOKENS else None
      for _ in range(_FILL_TRIES if task_names else 0):
        if ex is not None and len(encode_example(ex)[0]) <= free:
          break
        ex = corpus.sample(rng, task_names[int(rng.integers(len(task_names)))], text_chars)
      if ex is None or len(encode_example(ex)[0]) > free:
        break  # the rest of this row stays padding
      examples.append(ex)
      free -= len(encode_example(ex)[0])
  return examples


def train_batch(corpus, data_cfg, step):
  """The training batch of `step`: a pure function of (corpus seed, data config, step)."""
  rng = np.random.default_rng([corpus.seed, int(step)])
  examples = sample_examples(corpus, rng, dict(data_cfg.mixture), data_cfg.batch_size,
                             data_cfg.seq_len, data_cfg.text_chars)
  return pack(examples, data_cfg.batch_size, data_cfg.seq_len)


def eval_batches(examples, batch_size, seq_len):
  """Packs fixed examples into as many batches as they need (for held-out NLL)."""
  batches, current, rows, free = [], [], 0, seq_len
  for ex in examples:
    n = len(encode_example(ex)[0])
    if n > free:
      rows, free = rows + 1, seq_len
      if rows == batch_size:
        batches.append(pack(current, batch_size, seq_len))
        current, rows = [], 0
    current.append(ex)
    free -= n
  if current:
    batches.append(pack(current, batch_size, seq_len))
  return batches
