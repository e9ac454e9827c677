"""Prompt sources for generated workloads and token-count traces: `source(domain, length, rng)`
-> token ids, BOS first (the `PromptSource` protocol of serving/stream/workload.py).

- `synthetic`: random bytes from a per-domain alphabet (workload.SyntheticPromptSource), exact
  length; for random-init models and speed runs, where only lengths matter;
- `eval`: a random prompt of the committed eval set (moe_serve/data/eval_prompts.jsonl) of the
  asked domain; task prompts whole, text cut to the length (at least 8 tokens);
- `corpus`: a fresh corpus example (moe_serve/data/corpus.py, held-out split) of the asked
  domain; task prompts whole, text a window of about `length` tokens.

`exact_length(source)` wraps any of them to give exactly the asked length (draws concatenated,
then cut), which token-count traces (BurstGPT, Azure) need.
"""
from moe_serve import config as config_lib
from moe_serve.data import corpus as corpus_lib
from moe_serve.data import eval_prompts, tokenizer
from moe_serve.serving.stream import workload

KINDS = config_lib.PROMPT_SOURCES


class EvalPromptSource:
  """A random eval-set prompt of the asked domain.

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


class CorpusPromptSource:
  """A held-out corpus example of the asked domain, drawn with the request's generator."""

  def __init__(self, seed=0, tok=tokenizer.BYTES):
    self.corpus = corpus_lib.Corpus(seed)
    self.tok = tok

  def __call__(self, domain, length, rng):
    if domain not in corpus_lib.DOMAINS:
      raise ValueError(f"no corpus domain {domain!r}; have {list(corpus_lib.DOMAINS)}")
    # Text windows in characters: about one token per character for bytes, fewer for BPE.
    ex = self.corpus.sample(rng, domain, max(int(length), 8), heldout=True)
    ids = self.tok.encode(ex.prompt if ex.is_task else ex.answer)
    return ids if ex.is_task else ids[:max(int(length), 2)]


def exact_length(source):
  """`source` made to return exactly `length` ids (BOS first): further draws are appended
  without their BOS until long enough, then the ids are cut."""
  def exact(domain, length, rng):
    ids = list(source(domain, length, rng))
    while len(ids) < length:
      more = list(source(domain, length - len(ids) + 1, rng))
      ids += more[1:] if more[:1] == ids[:1] else more  # drop the repeated BOS
    return ids[:max(int(length), 1)]
  return exact


def make(kind, tok=tokenizer.BYTES, seed=0):
  """The prompt source called `kind` (one of KINDS) for a model with tokenizer `tok`."""
  if kind == "synthetic":
    return workload.SyntheticPromptSource(tok=tok)
  if kind == "eval":
    return EvalPromptSource(tok=tok)
  if kind == "corpus":
    return CorpusPromptSource(seed, tok=tok)
  raise ValueError(f"prompt source {kind!r} is not one of {list(KINDS)}")
