"""Quality evaluator: the step runner agrees with a full forward pass; exact match is strict."""
import jax
import numpy as np

from moe_serve.data import corpus, tokenizer
from moe_serve.metrics import quality
from moe_serve.model import api
from moe_serve.parallel import steps

_PAD_TO = 24  # one compiled forward shape for every reference pass below


def _forward_logits(forward, params, seq):
  """Full-pass logits [len(seq), V] of one sequence, padded to a fixed length (segment -1)."""
  toks = np.zeros((1, _PAD_TO), np.int32)
  seg = -np.ones((1, _PAD_TO), np.int32)
  toks[0, :len(seq)], seg[0, :len(seq)] = seq, 0
  logits, _ = forward(params, toks, seg)
  return np.asarray(logits[0, :len(seq)])


def _model(tiny_cfg):
  m = tiny_cfg.model
  return m, api.init_params(m, jax.random.key(0))


def test_score_matches_forward(tiny_cfg):
  m, params = _model(tiny_cfg)
  runner = quality.StepRunner(m, params, num_slots=4, chunk=8)
  prompts = [tokenizer.encode("hello world"), tokenizer.encode("x=")]
  conts = [tokenizer.encode(" again", bos=False), tokenizer.encode("12345678901", bos=False)]
  got = runner.score(prompts, conts)
  forward = steps.make_forward_fn(m)
  for p, c, lp in zip(prompts, conts, got):
    ref = jax.nn.log_softmax(_forward_logits(forward, params, p + c), -1)
    want = [ref[len(p) - 1 + j, t] for j, t in enumerate(c)]
    # Chunked prefill vs one full pass: different matmul shapes, float32 rounding only.
    np.testing.assert_allclose(lp, want, atol=1e-4)


def test_generate_is_greedy_and_stops_at_eos(tiny_cfg):
  m, params = _model(tiny_cfg)
  runner = quality.StepRunner(m, params, num_slots=4, chunk=8)
  prompts = [tokenizer.encode("12+34="), tokenizer.encode("sort: dcba="),
             tokenizer.encode("a")]
  outs = runner.generate(prompts, 6)
  forward = steps.make_forward_fn(m)
  for p, out in zip(prompts, outs):
    seq = list(p)
    for tok in out:  # each generated token is the argmax of a full forward pass
      assert int(np.argmax(_forward_logits(forward, params, seq)[-1])) == tok
      seq.append(tok)
    assert len(out) == 6 or out[-1] == tokenizer.EOS


def test_engine_generates_what_the_step_loop_does():
  from configs import serve_default  # pylint: disable=import-outside-toplevel
  cfg = serve_default.get_config("size=tiny")
  params = api.init_params(cfg.model, jax.random.key(0))
  prompts = [tokenizer.encode(p) for p in ("12+34=", "sort: dcba=", "reverse: abc=", "a")]
  via_engine = quality.EngineRunner(cfg, params).generate(prompts, 6)
  via_step = quality.StepRunner(cfg.model, params, num_slots=8, chunk=8).generate(prompts, 6)
  assert via_engine == via_step  # dropless routing: batch composition cannot change tokens


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
