"""A small fixed-shape driver of the engine step (chunked prefill, then greedy decode) shared by
the sharded and multi-process tests, so that every mesh runs exactly the same steps.

Every step has the same shape (decode [SLOTS, 1] + prefill [SLOTS, CHUNK], idle rows padded):
one compilation per mesh, and the shapes stay fixed as the dropless contract requires. The
prefill is experiments/probes/greedy.py's; the decode keeps an all-padding prefill part of the same
shape
(greedy.decode's prefill part is empty, another shape), and it returns every step's logits.
"""
import numpy as np

from moe_serve.model import parts
from moe_serve.experiments.probes import greedy

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
  cache, prefill_logits = greedy.prefill(step, params, cache, prompt_list, CHUNK, n)
  all_logits = [np.stack([logits_LxV[-1] for logits_LxV in prefill_logits])]
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
