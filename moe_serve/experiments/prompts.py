"""Prompts for experiments, all from the committed eval set (moe_serve/data/eval_prompts.jsonl),
so a study never depends on the interpreter's version: background traffic, targets, quality."""
from moe_serve.data import eval_prompts, tokenizer
from moe_serve.serving.stream import prompt_sources
from moe_serve.serving.stream.request import Request, SamplingParams


EvalPromptSource = prompt_sources.EvalPromptSource  # moved to serving/stream/prompt_sources.py


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
