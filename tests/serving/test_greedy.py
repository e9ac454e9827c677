"""The greedy loop: every token is a full forward pass's argmax, idle rows change nothing."""
import numpy as np

from moe_serve.data import tokenizer
from moe_serve.parallel import steps
from moe_serve.experiments.probes import greedy

_PAD_TO = 20  # one compiled forward shape for both reference passes


def test_decode_without_eos_stop_matches_forward_and_ignores_idle_rows(tiny_cfg):
  m = tiny_cfg.model
  params = steps.make_init_fn(m)(0)
  step = steps.make_step_fn(m)
  prompts = [tokenizer.encode("12+34="), tokenizer.encode("The experts ")]
  outs = {}
  for rows in (2, 4):  # 4: two idle rows (segment id -1) in every step
    _, outs[rows] = greedy.generate(step, params, steps.make_cache_fn(m)(rows), prompts, 5, 8, rows,
                                    stop_at_eos=False)
  assert outs[2] == outs[4]
  forward = steps.make_forward_fn(m)
  for p, out in zip(prompts, outs[4]):
    assert len(out) == 5  # no EOS stop: every prompt decodes max_new_tokens tokens
    seq = p + out
    toks_BxL, seg_BxL = np.zeros((1, _PAD_TO), np.int32), -np.ones((1, _PAD_TO), np.int32)
    toks_BxL[0, :len(seq)], seg_BxL[0, :len(seq)] = seq, 0
    logits_BxLxV, _ = forward(params, toks_BxL, seg_BxL)
    assert np.argmax(np.asarray(logits_BxLxV[0]), -1)[len(p) - 1:len(seq) - 1].tolist() == out
