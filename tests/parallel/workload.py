"""A small fixed-shape serving workload (chunked prefill, then greedy decode) shared by the
sharded and multi-process tests, so that every mesh runs exactly the same steps.

Every step has the same shape (decode [SLOTS, 1] + prefill [SLOTS, CHUNK], idle rows padded):
one compilation per mesh, and the shapes stay fixed as the dropless contract requires.
"""
import numpy as np

from moe_serve.model import parts

SLOTS = 8  # a multiple of every data axis tested
CHUNK = 8


def prompts(vocab_size, seed=0):
  """SLOTS prompts of different lengths (3..17 tokens), so chunks carry padding."""
  rng = np.random.default_rng(seed)
  return [rng.integers(3, vocab_size, size=3 + 2 * i).astype(np.int32) for i in range(SLOTS)]


def run(step, params, cache, prompt_list, new_tokens):
  """Prefills every prompt into slot i (chunk by chunk), then decodes greedily.

  Returns (tokens [SLOTS, new_tokens], logits of every decode step [new_tokens - 1, SLOTS, V]
  plus the last prefill logits as step 0 -> [new_tokens, SLOTS, V]).
  """
  n = len(prompt_list)
  slots = np.arange(n)
  idle = parts.decode_part(np.zeros(n), slots, np.zeros(n), -np.ones(n))
  last = [None] * n
  for start in range(0, max(len(p) for p in prompt_list), CHUNK):
    toks = np.zeros((n, CHUNK), np.int32)
    lens = np.zeros(n, np.int32)
    for i, p in enumerate(prompt_list):
      piece = p[start:start + CHUNK]
      toks[i, :len(piece)], lens[i] = piece, len(piece)
    seg = np.where(lens > 0, slots, -1)
    batch = parts.StepBatch(idle, parts.chunk_part(toks, slots, np.full(n, start), lens, seg))
    logits, cache, _ = step(params, cache, batch)
    pre = np.asarray(logits["prefill"])
    for i in np.nonzero(lens)[0]:
      last[i] = pre[i, lens[i] - 1]
  all_logits = [np.stack(last)]
  tok, pos = all_logits[0].argmax(-1), np.array([len(p) for p in prompt_list])
  out = [tok]
  for _ in range(new_tokens - 1):
    no_prefill = parts.chunk_part(np.zeros((n, CHUNK)), slots, pos, np.zeros(n), -np.ones(n))
    batch = parts.StepBatch(parts.decode_part(tok, slots, pos, slots), no_prefill)
    logits, cache, _ = step(params, cache, batch)
    all_logits.append(np.asarray(logits["decode"]))
    tok, pos = all_logits[-1].argmax(-1), pos + 1
    out.append(tok)
  return np.stack(out, 1), np.stack(all_logits)
