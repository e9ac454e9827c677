"""Quality through the serving path: exact match of greedy task answers, NLL of text continuations.

The evaluator talks to a *runner* with two methods (the seam between quality and serving):
  generate(prompts_ids, max_new_tokens, domains=None) -> completions (token lists, EOS kept)
  score(prompts_ids, continuations_ids) -> per-token log-probabilities of each continuation
`EngineRunner` generates through the serving engine (continuous batching, greedy sampling);
`StepRunner` drives the same jitted engine step (parallel/steps.py) directly: chunked prefill of
a group of prompts into the slots, then greedy decode, finished slots going idle (segment id -1).
Scoring needs the logits of given tokens, which the engine does not expose: both score with the
step (EngineRunner through a StepRunner).
"""
import collections

import jax
import numpy as np

from moe_serve.data import tasks, tokenizer
from moe_serve.model import api, parts
from moe_serve.parallel import steps

MAX_NEW_TOKENS = 16  # longest task answer is 8 characters; the rest is room to fail to stop


class StepRunner:
  """Greedy generation and scoring through the engine step, `num_slots` requests at a time."""

  def __init__(self, model_cfg, params, num_slots=64, chunk=32):
    self.model_cfg, self.params = model_cfg, params
    self.num_slots, self.chunk = num_slots, chunk
    self._step = steps.make_step_fn(model_cfg)

  def _prefill(self, cache, seqs):
    """Prefills seqs[i] into slot i; returns (cache, logits [i][len(seqs[i]), V] as numpy)."""
    out = [[] for _ in seqs]
    for batch in parts.prefill_batches(seqs, self.chunk, rows=self.num_slots):
      logits, cache, _ = self._step(self.params, cache, batch)
      pre = np.asarray(logits["prefill"])
      lens = np.asarray(batch.prefill.segment_ids_BxL >= 0).sum(1)
      for i in range(len(seqs)):
        out[i].append(pre[i, :lens[i]])
    return cache, [np.concatenate(o) for o in out]

  def _groups(self, items):
    for start in range(0, len(items), self.num_slots):
      yield items[start:start + self.num_slots]

  def generate(self, prompts_ids, max_new_tokens, domains=None):
    """Greedy completions; each stops after its first EOS (kept) or after max_new_tokens."""
    del domains  # the step has no use for them
    s = self.num_slots
    results = []
    for group in self._groups(prompts_ids):
      n = len(group)
      cache, logits = self._prefill(api.init_cache(self.model_cfg, s), group)
      tok = np.zeros(s, np.int64)
      tok[:n] = [lg[-1].argmax() for lg in logits]
      pos = np.zeros(s, np.int64)
      pos[:n] = [len(p) for p in group]
      outs = [[int(tok[i])] for i in range(n)]
      live = np.zeros(s, bool)
      live[:n] = tok[:n] != tokenizer.EOS
      for _ in range(max_new_tokens - 1):
        if not live.any():
          break
        batch = parts.StepBatch(parts.decode_part(tok, np.arange(s), pos,
                                                  np.where(live, np.arange(s), -1)),
                                parts.empty_part(0, self.chunk))
        step_logits, cache, _ = self._step(self.params, cache, batch)
        tok = np.asarray(step_logits["decode"]).argmax(-1)
        pos = pos + 1
        for i in np.nonzero(live)[0]:
          outs[i].append(int(tok[i]))
          live[i] = tok[i] != tokenizer.EOS
      results += outs
    return results

  def score(self, prompts_ids, continuations_ids):
    """log p(continuation token | everything before it), one array per pair."""
    seqs = [list(p) + list(c) for p, c in zip(prompts_ids, continuations_ids)]
    out = []
    for start in range(0, len(seqs), self.num_slots):
      group = seqs[start:start + self.num_slots]
      conts = continuations_ids[start:start + self.num_slots]
      _, logits = self._prefill(api.init_cache(self.model_cfg, self.num_slots), group)
      for seq, cont, lg in zip(group, conts, logits):
        logp = jax.nn.log_softmax(lg.astype(np.float32), axis=-1)
        first = len(seq) - len(cont)  # logits at position t predict token t + 1
        out.append(np.asarray([logp[first - 1 + j, tok] for j, tok in enumerate(cont)]))
    return out


class EngineRunner:
  """Generation through the serving engine (moe_serve/serving); all requests arrive at time 0.

  `cfg` is a serving config (configs/serve_default.py) whose `model` section is the model's; the
  engine is built and warmed up once, or an existing `engine` is used. Continuations are scored
  through the engine's prefill when it records prompt log-probs (`serve.prompt_logprobs`), so
  NLL is measured under the same co-batching as generation; otherwise through the step.
  """

  def __init__(self, cfg, params, engine=None, first_id=0):
    if engine is None:
      from moe_serve.serving import run as serve_run  # pylint: disable=import-outside-toplevel
      engine = serve_run.build_engine(cfg, params=params)
      engine.warmup()
    self.engine, self.first_id = engine, first_id
    self._scorer = None if engine.want_prompt_logprobs else StepRunner(
        cfg.model, params, num_slots=cfg.serve.max_num_seqs,
        chunk=max(cfg.serve.buckets.chunk_lens))

  def _serve(self, prompts_ids, max_new_tokens, domains):
    from moe_serve.serving import request  # pylint: disable=import-outside-toplevel
    reqs = [request.Request(id=self.first_id + i, prompt=p, max_new_tokens=max_new_tokens,
                            domain=d) for i, (p, d) in enumerate(zip(prompts_ids, domains))]
    records = {r["id"]: r for r in self.engine.run(reqs).requests}
    rejected = [r for r in records.values() if r["status"] != "finished"]
    if rejected:
      raise ValueError(f"the engine rejected {len(rejected)} eval requests, e.g. "
                       f"{rejected[0]['reason']}; fix the serving config for this model")
    return [records[r.id] for r in reqs]

  def generate(self, prompts_ids, max_new_tokens, domains=None):
    domains = domains or [self.engine.limits.domains[0]] * len(prompts_ids)
    return [r["tokens"] for r in self._serve(prompts_ids, max_new_tokens, domains)]

  def score(self, prompts_ids, continuations_ids):
    if self._scorer is not None:
      return self._scorer.score(prompts_ids, continuations_ids)
    # prompt_logprobs[q] = log p(token q + 1 | tokens <= q): the continuation's are the last ones.
    recs = self._serve([list(p) + list(c) for p, c in zip(prompts_ids, continuations_ids)], 1,
                       [self.engine.limits.domains[0]] * len(prompts_ids))
    return [np.asarray(r["prompt_logprobs"][-len(c):]) for r, c in zip(recs, continuations_ids)]


def completion_text(ids):
  """(text before the first EOS, whether an EOS was produced)."""
  ids = list(ids)
  stopped = tokenizer.EOS in ids
  return tokenizer.decode(ids[:ids.index(tokenizer.EOS)] if stopped else ids), stopped


def evaluate(runner, examples, max_new_tokens=MAX_NEW_TOKENS):
  """Exact match per task domain and continuation NLL per text domain.

  A task answer is right when the greedy completion is exactly the answer followed by EOS.
  NLL is nats per continuation token (EOS not included). Returns a dict with `exact_match`
  {domain: fraction}, `exact_match_mean` (unweighted over task domains present), `nll`
  {domain: value}, `count` {domain: n} and `records` (one dict per example).
  """
  task = [ex for ex in examples if ex.domain in tasks.TASK_DOMAINS]
  text = [ex for ex in examples if ex.domain not in tasks.TASK_DOMAINS]
  records = []
  if task:
    completions = runner.generate([tokenizer.encode(ex.prompt) for ex in task], max_new_tokens,
                                  [ex.domain for ex in task])
    for ex, ids in zip(task, completions):
      got, stopped = completion_text(ids)
      records.append({"domain": ex.domain, "prompt": ex.prompt, "answer": ex.answer,
                      "completion": got, "correct": bool(stopped and got == ex.answer)})
  if text:
    logps = runner.score([tokenizer.encode(ex.prompt) for ex in text],
                         [tokenizer.encode(ex.answer, bos=False) for ex in text])
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


def evaluate_served(serve_cfg, params, per_domain=None, path=None):
  """`evaluate` on the committed eval set (first `per_domain` rows per domain) via the engine."""
  from moe_serve.data import eval_prompts  # pylint: disable=import-outside-toplevel
  examples = eval_prompts.load(path or eval_prompts.DEFAULT_PATH, per_domain=per_domain)
  return evaluate(EngineRunner(serve_cfg, params), examples)
