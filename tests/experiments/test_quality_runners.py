"""Quality runners: the step runner agrees with a full forward pass and with the engine."""
import jax
import numpy as np

from moe_serve.data import tokenizer
from moe_serve.experiments import quality_runners
from moe_serve.parallel import steps
from tests.tolerances import LOGPROB_ATOL

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
  return m, steps.make_init_fn(m)(0)


def test_score_matches_forward(tiny_cfg):
  m, params = _model(tiny_cfg)
  runner = quality_runners.StepRunner(m, params, num_slots=4, chunk=8)
  prompts = [tokenizer.encode("hello world"), tokenizer.encode("x=")]
  conts = [tokenizer.encode(" again", bos=False), tokenizer.encode("12345678901", bos=False)]
  got = runner.score(prompts, conts)
  forward = steps.make_forward_fn(m)
  for p, c, lp in zip(prompts, conts, got):
    ref = jax.nn.log_softmax(_forward_logits(forward, params, p + c), -1)
    want = [ref[len(p) - 1 + j, t] for j, t in enumerate(c)]
    np.testing.assert_allclose(lp, want, atol=LOGPROB_ATOL)  # chunked prefill vs one full pass


def test_generate_is_greedy_and_stops_at_eos(tiny_cfg):
  m, params = _model(tiny_cfg)
  runner = quality_runners.StepRunner(m, params, num_slots=4, chunk=8)
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
  params = steps.make_init_fn(cfg.model)(0)
  prompts = [tokenizer.encode(p) for p in ("12+34=", "sort: dcba=", "reverse: abc=", "a")]
  via_engine = quality_runners.EngineRunner(cfg, params).generate(prompts, 6)
  via_step = quality_runners.StepRunner(cfg.model, params, num_slots=8, chunk=8)
  assert via_engine == via_step.generate(prompts, 6)  # dropless: co-batching cannot change tokens
