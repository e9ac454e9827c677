"""Prompts for experiments, all from the committed eval set (moe_serve/data/eval_prompts.jsonl),
so a study never depends on the interpreter's version: background traffic, targets, quality."""
from moe_serve.data import eval_prompts, tokenizer
from moe_serve.serving.request import Request, SamplingParams


class EvalPromptSource:
  """A serving PromptSource: a random eval-set prompt of the asked domain.

  Task prompts are used whole (their length is the task's); text prompts are cut to the asked
  length in tokens (at least 8), so the workload's length distribution applies to text.
  """

  def __init__(self, examples=None, tok=tokenizer.BYTES):
    examples = eval_prompts.load() if examples is None else examples
    self.tok = tok  # the served model's tokenizer
    self.by_domain = {}
    for ex in examples:
      self.by_domain.setdefault(ex.domain, []).append(ex)

  def __call__(self, domain, length, rng):
    pool = self.by_domain.get(domain)
    if not pool:
      raise ValueError(f"no eval prompts for domain {domain!r}; have {sorted(self.by_domain)}")
    ex = pool[int(rng.integers(len(pool)))]
    ids = self.tok.encode(ex.prompt)
    return ids if ex.is_task else ids[:max(int(length), 8)]


def target_requests(domains, per_domain, max_new_tokens, first_id, tok=tokenizer.BYTES):
  """Greedy target requests: the first `per_domain` eval prompts of each domain (encoded by
  `tok`), ids from `first_id` (kept apart from the background traffic's ids)."""
  source = EvalPromptSource(tok=tok)
  out = []
  for d in domains:
    pool = source.by_domain.get(d, [])
    if len(pool) < per_domain:
      raise ValueError(f"study.target_domains: domain {d!r} has {len(pool)} eval prompts, "
                       f"{per_domain} asked; domains: {sorted(source.by_domain)}")
    for ex in pool[:per_domain]:
      out.append(Request(id=first_id + len(out), prompt=tok.encode(ex.prompt),
                         max_new_tokens=max_new_tokens, sampling=SamplingParams(), domain=d))
  return out


def co_requests(source, domains, count, rng, max_new_tokens, first_id):
  """`count` greedy requests at time 0 with prompts from `domains` (uniformly)."""
  out = []
  for i in range(count):
    d = domains[int(rng.integers(len(domains)))]
    out.append(Request(id=first_id + i, prompt=source(d, 64, rng), max_new_tokens=max_new_tokens,
                       sampling=SamplingParams(), domain=d))
  return out



def eval_examples(per_domain):
  """The first `per_domain` eval examples of every domain (quality evaluation)."""
  return eval_prompts.load(per_domain=per_domain)
