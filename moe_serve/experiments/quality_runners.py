"""Runners that produce what metrics/quality.py scores: greedy completions and continuation
log-probabilities, through the serving path.

A runner has two methods (the seam between the quality metric and serving):
  generate(prompts_ids, max_new_tokens, domains=None) -> completions (token lists, EOS kept)
  score(prompts_ids, continuations_ids) -> per-token log-probabilities of each continuation
`EngineRunner` generates through the serving engine (continuous batching, greedy sampling);
`StepRunner` drives the same jitted engine step (parallel/steps.py) directly through
experiments/probes/greedy.py: chunked prefill of a group of prompts into the slots, then greedy
decode,
finished slots going idle (segment id -1). Scoring needs the logits of given tokens, which the
engine exposes only when it records prompt log-probs; otherwise both score with the step.

Axis letters (docs/design.md section 2): L positions of one sequence, V vocabulary.
"""
import jax
import numpy as np

from moe_serve import loading
from moe_serve.data import eval_prompts
from moe_serve.metrics import quality
from moe_serve.parallel import steps
from moe_serve.experiments.probes import greedy
from moe_serve.serving.stream import request
from moe_serve.serving import run as serve_run


class StepRunner:
  """Greedy generation and scoring through the engine step, `num_slots` requests at a time."""

  def __init__(self, model_cfg, params, num_slots=64, chunk=32, mesh=None, rules=None):
    """On `mesh` (with the config's `rules`) the step and cache are sharded; `num_slots` must
    then be a multiple of the mesh's data size."""
    self.model_cfg, self.params = model_cfg, params
    self.num_slots, self.chunk = num_slots, chunk
    self._step = steps.make_step_fn(model_cfg, mesh, rules)
    # Committed like the step's output (steps.make_cache_fn), so each step shape compiles once.
    self._cache_fn = steps.make_cache_fn(model_cfg, mesh, rules)

  def _groups(self, items):
    for start in range(0, len(items), self.num_slots):
      yield items[start:start + self.num_slots]

  def _new_cache(self):
    return self._cache_fn(self.num_slots)

  def generate(self, prompts_ids, max_new_tokens, domains=None):
    """Greedy completions; each stops after its first EOS (kept) or after max_new_tokens."""
    del domains  # the step has no use for them
    results = []
    for group in self._groups(prompts_ids):
      _, outs = greedy.generate(self._step, self.params, self._new_cache(), group, max_new_tokens,
                                self.chunk, self.num_slots)
      results += outs
    return results

  def score(self, prompts_ids, continuations_ids):
    """log p(continuation token | everything before it), one array per pair."""
    seqs = [list(p) + list(c) for p, c in zip(prompts_ids, continuations_ids)]
    out = []
    for group, conts in zip(self._groups(seqs), self._groups(continuations_ids)):
      _, logits = greedy.prefill(self._step, self.params, self._new_cache(), group, self.chunk,
                                 self.num_slots)
      for seq, cont, logits_LxV in zip(group, conts, logits):
        logp_LxV = jax.nn.log_softmax(logits_LxV.astype(np.float32), axis=-1)
        first = len(seq) - len(cont)  # logits at position t predict token t + 1
        out.append(np.asarray([logp_LxV[first - 1 + j, tok] for j, tok in enumerate(cont)]))
    return out


class EngineRunner:
  """Generation through the serving engine (moe_serve/serving); all requests arrive at time 0.

  `cfg` is a serving config (configs/serve_default.py) whose `model` section is the model's; the
  engine is built and warmed up once, or an existing `engine` is used. Continuations are scored
  through the engine's prefill when it records prompt log-probs (`serve.prompt_logprobs`), so
  NLL is measured under the same co-batching as generation; otherwise through the step.
  """

  def __init__(self, cfg, params, engine=None, first_id=0, progress=None, mesh=None):
    if engine is None:
      # Every request arrives at time 0, so the schedule (and every token) is the same on any
      # clock: the measured one needs no clock profile for this model.
      measured = cfg.copy_and_resolve_references()
      measured.clock.mode = "measured"
      engine = serve_run.build_engine(measured, params=params, mesh=mesh)
      engine.warmup(progress)
    self.engine, self.first_id, self.progress = engine, first_id, progress
    self._scorer = None if engine.want_prompt_logprobs else StepRunner(
        cfg.model, params, num_slots=cfg.serve.max_num_seqs,
        chunk=max(cfg.serve.buckets.chunk_lens), mesh=mesh,
        rules=cfg.logical_axis_rules if mesh is not None else None)

  def _serve(self, prompts_ids, max_new_tokens, domains, what):
    reqs = [request.Request(id=self.first_id + i, prompt=p, max_new_tokens=max_new_tokens,
                            domain=d) for i, (p, d) in enumerate(zip(prompts_ids, domains))]
    on_step = None
    if self.progress is not None:
      on_step = lambda engine, rec: self.progress(what, engine.done, len(reqs))
    records = {r["id"]: r for r in self.engine.run(reqs, on_step=on_step).requests}
    rejected = [r for r in records.values() if r["status"] != "finished"]
    if rejected:
      raise ValueError(f"the engine rejected {len(rejected)} eval requests, e.g. "
                       f"{rejected[0]['reason']}; fix the serving config for this model")
    return [records[r.id] for r in reqs]

  def generate(self, prompts_ids, max_new_tokens, domains=None):
    """Greedy completions through the engine (EOS kept), in the order of `prompts_ids`."""
    domains = domains or [self.engine.limits.domains[0]] * len(prompts_ids)
    return [r["tokens"] for r in self._serve(prompts_ids, max_new_tokens, domains,
                                             "quality: generate")]

  def score(self, prompts_ids, continuations_ids):
    """log p(continuation token | everything before it), one array per pair."""
    if self._scorer is not None:
      return self._scorer.score(prompts_ids, continuations_ids)
    # prompt_logprobs[q] = log p(token q + 1 | tokens <= q): the continuation's are the last ones.
    recs = self._serve([list(p) + list(c) for p, c in zip(prompts_ids, continuations_ids)], 1,
                       [self.engine.limits.domains[0]] * len(prompts_ids), "quality: score")
    return [np.asarray(r["prompt_logprobs"][-len(c):]) for r, c in zip(recs, continuations_ids)]


def evaluate_served(serve_cfg, params, per_domain=None, path=None, progress=None, mesh=None):
  """quality.evaluate on the committed eval set (first `per_domain` rows per domain) via the
  engine (on `mesh` if given, `params` placed on it); `progress(what, done, total)` hears of
  compilation and requests done."""
  examples = eval_prompts.load(path or eval_prompts.DEFAULT_PATH, per_domain=per_domain)
  return quality.evaluate(EngineRunner(serve_cfg, params, progress=progress, mesh=mesh), examples,
                          tok=loading.tokenizer(serve_cfg))
