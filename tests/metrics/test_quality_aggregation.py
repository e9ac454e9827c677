"""How quality scores aggregate, with runner values that tell the candidate definitions apart.

metrics/quality.evaluate documents: NLL per text domain is pooled over continuation tokens
(sum of -log p over every token / number of tokens), not a mean of per-example means; the exact
match mean is unweighted over task domains, not pooled over examples.
"""
import numpy as np

from moe_serve.data import corpus, tokenizer
from moe_serve.metrics.quality import evaluate

EXAMPLES = [
    corpus.Example("add", "1+1=", "2"), corpus.Example("add", "2+2=", "4"),
    corpus.Example("add", "3+3=", "6"), corpus.Example("sort", "sort: ba=", "ab"),
    corpus.Example("prose", "The", "ab"), corpus.Example("prose", "A", "cdefgh"),
    corpus.Example("code", "x", "yz"),
]
COMPLETIONS = ["2", "5", "6", "ab"]  # task answers in order: add right, wrong, right; sort right
LOGPROBS = {"ab": [-1.0, -3.0], "cdefgh": [-0.5] * 6, "yz": [-0.25, -0.75]}


class _Runner:
  """Answers task prompts from COMPLETIONS (then EOS) and scores continuations from LOGPROBS."""

  def generate(self, prompts_ids, max_new_tokens, domains=None):
    assert len(prompts_ids) == len(COMPLETIONS)
    return [tokenizer.encode(c, bos=False, eos=True)[:max_new_tokens] for c in COMPLETIONS]

  def score(self, prompts_ids, continuations_ids):
    return [np.asarray(LOGPROBS[tokenizer.decode(c)]) for c in continuations_ids]


def test_nll_is_pooled_over_tokens_and_exact_match_mean_is_over_domains():
  result = evaluate(_Runner(), EXAMPLES)
  # prose: (1 + 3 + 6 * 0.5) nats / 8 tokens = 0.875; a mean of per-example means would be
  # (2 + 0.5) / 2 = 1.25. code: (0.25 + 0.75) / 2 = 0.5 either way.
  assert result["nll"] == {"prose": 0.875, "code": 0.5}
  assert result["exact_match"] == {"add": 2 / 3, "sort": 1.0}
  # Unweighted over the two task domains: (2/3 + 1) / 2 = 5/6; pooled over examples it is 3/4.
  assert result["exact_match_mean"] == (2 / 3 + 1.0) / 2
  assert result["count"] == {"add": 3, "sort": 1, "prose": 2, "code": 1}
  sums = {r["answer"]: (r["nll_sum"], r["tokens"]) for r in result["records"] if "nll_sum" in r}
  assert sums == {"ab": (4.0, 2), "cdefgh": (3.0, 6), "yz": (1.0, 2)}
