"""Quality scoring: exact match of greedy task answers, NLL of text continuations.

Scores what a *runner* returns; the runners that generate and score through the serving path
live in experiments/quality_runners.py (metrics read results, they never drive the engine):
  generate(prompts_ids, max_new_tokens, domains=None) -> completions (token lists, EOS kept)
  score(prompts_ids, continuations_ids) -> per-token log-probabilities of each continuation
"""
import collections

import numpy as np

from moe_serve.data import tasks, tokenizer

MAX_NEW_TOKENS = 16  # longest task answer is 8 characters; the rest is room to fail to stop


def completion_text(ids, tok=tokenizer.BYTES):
  """(text before the first EOS, whether an EOS was produced), decoded by `tok`."""
  ids = list(ids)
  stopped = tok.eos_id in ids
  return tok.decode(ids[:ids.index(tok.eos_id)] if stopped else ids), stopped


def evaluate(runner, examples, max_new_tokens=MAX_NEW_TOKENS, tok=tokenizer.BYTES):
  """Exact match per task domain and continuation NLL per text domain.

  A task answer is right when the greedy completion is exactly the answer followed by EOS.
  NLL is nats per continuation token (EOS not included). Returns a dict with `exact_match`
  {domain: fraction}, `exact_match_mean` (unweighted over task domains present), `nll`
  {domain: value}, `count` {domain: n} and `records` (one dict per example). Text is encoded
  and decoded by `tok`, the served model's tokenizer.
  """
  task = [ex for ex in examples if ex.domain in tasks.TASK_DOMAINS]
  text = [ex for ex in examples if ex.domain not in tasks.TASK_DOMAINS]
  records = []
  if task:
    completions = runner.generate([tok.encode(ex.prompt) for ex in task], max_new_tokens,
                                  [ex.domain for ex in task])
    for ex, ids in zip(task, completions):
      got, stopped = completion_text(ids, tok)
      records.append({"domain": ex.domain, "prompt": ex.prompt, "answer": ex.answer,
                      "completion": got, "correct": bool(stopped and got == ex.answer)})
  if text:
    logps = runner.score([tok.encode(ex.prompt) for ex in text],
                         [tok.encode(ex.answer, bos=False) for ex in text])
    for ex, lp in zip(text, logps):
      records.append({"domain": ex.domain, "prompt": ex.prompt, "answer": ex.answer,
                      "nll_sum": float(-lp.sum()), "tokens": int(lp.size)})
  by_domain = collections.defaultdict(list)
  for r in records:
    by_domain[r["domain"]].append(r)
  exact = {d: float(np.mean([r["correct"] for r in rs])) for d, rs in by_domain.items()
           if d in tasks.TASK_DOMAINS}
  nll = {d: sum(r["nll_sum"] for r in rs) / max(1, sum(r["tokens"] for r in rs))
         for d, rs in by_domain.items() if d not in tasks.TASK_DOMAINS}
  return {"exact_match": exact,
          "exact_match_mean": float(np.mean(list(exact.values()))) if exact else None,
          "nll": nll, "count": {d: len(rs) for d, rs in by_domain.items()}, "records": records}

