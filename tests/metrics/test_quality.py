"""Quality scoring: exact match is strict; NLL is nats per continuation token.

The runners that feed it are tested in tests/experiments/test_quality_runners.py.
"""
import numpy as np

from moe_serve.data import corpus, tokenizer
from moe_serve.metrics import quality


class _FakeRunner:
  def __init__(self, completions):
    self.completions = completions

  def generate(self, prompts_ids, max_new_tokens, domains=None):
    return [tokenizer.encode(c, bos=False)[:max_new_tokens] for c in self.completions]

  def score(self, prompts_ids, continuations_ids):
    return [np.full(len(c), -2.0) for c in continuations_ids]


def test_exact_match_needs_answer_then_eos():
  eos = chr(0)  # placeholder, replaced by the EOS id below
  examples = [corpus.Example("add", "1+1=", "2"), corpus.Example("add", "2+2=", "4"),
              corpus.Example("sort", "sort: ba=", "ab"), corpus.Example("sort", "sort: cb=", "bc"),
              corpus.Example("prose", "The", " end")]

  class Runner(_FakeRunner):
    def generate(self, prompts_ids, max_new_tokens, domains=None):
      outs = super().generate(prompts_ids, max_new_tokens, domains)
      return [[tokenizer.EOS if t == ord(eos) + tokenizer.OFFSET else t for t in o] for o in outs]

  result = quality.evaluate(Runner(["2" + eos, "4", "ab" + eos + "zz", "bcd" + eos]), examples)
  assert result["exact_match"] == {"add": 0.5, "sort": 0.5}  # "4" never stopped; "bcd" is wrong
  assert result["exact_match_mean"] == 0.5
  assert result["nll"] == {"prose": 2.0}
  assert result["count"] == {"add": 2, "sort": 2, "prose": 1}
