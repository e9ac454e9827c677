"""Virtual time worked by hand: one request, a chunked prefill, then decode steps.

The cost-model clock advances each step by the sum of coefficient x feature over what the step
computes (serving/clock/step_cost.py): its decode rows and prefill tokens, and the query-key pairs
its
attention reads (rows x kv_len). Coefficients are powers of two, so every figure below is exact in
float64.
"""
from fractions import Fraction

import pytest

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.metrics import latency
from moe_serve.serving.clock import running as clock_lib
from moe_serve.serving.loop.engine import Engine
from moe_serve.serving.stream.request import Request
from tests.serving import fakes

VOCAB = 48
COEF = dict(fixed=Fraction(1, 8), decode_rows=Fraction(1, 64), prefill_tokens=Fraction(1, 64),
            decode_kv=Fraction(1, 1024), prefill_kv=Fraction(1, 2048), capacity_pairs=Fraction(1),
            expert_rows=Fraction(1, 2), a2a_rows=Fraction(0))


def _cfg():
  cfg = serve_default.get_config("size=tiny")
  cfg.model.vocab_size = VOCAB
  cfg.serve.update(max_num_seqs=1, max_num_batched_tokens=5, ignore_eos=True, kv_block_size=4)
  cfg.serve.buckets.update(decode_rows=(1,), prefill_rows=(0, 1), chunk_lens=(4,), kv_lens=(8,))
  cfg.clock.update(mode="cost_model", profile="", coef={k: float(v) for k, v in COEF.items()})
  config_lib.validate(cfg)
  config_lib.validate_serve(cfg)
  return cfg


def test_step_cost_features_step_times_ttft_and_tpot_by_hand():
  cfg = _cfg()
  model = fakes.FakeModel(1, cfg.model.max_len, VOCAB)
  req = Request(id=0, prompt=[1] + list(range(3, 12)), max_new_tokens=4, arrival=0.5,
                domain="add")
  log = Engine(cfg, model, None, model.init_cache(), clock_lib.Clock(cfg.clock)).run([req])

  # A 10-token prompt in chunks of 4: positions 0-3, 4-7, 8-9; the last chunk samples output 1.
  # Then outputs 2-4 come from decode rows feeding positions 10, 11, 12. A token at position q
  # attends to q + 1 keys.
  attended_kv = [1 + 2 + 3 + 4, 5 + 6 + 7 + 8, 9 + 10, 11, 12, 13]
  # Step shapes (B, P, L): one decode row always (padding while prefilling), one prefill row of
  # 4 positions while prefilling (the 2-token chunk computes 4 too), none after. Attention reads
  # the smallest kv bucket (8 or max_len 64) holding the step's longest row: 4, 8, 10, ... 13.
  # The tiny config is dropless (no capacity ranking) and the fake model reports no expert
  # pairs, so capacity_pairs and expert_rows are 0.
  assert [s["attended_kv"] for s in log.steps] == attended_kv
  assert [s["bucket"] for s in log.steps] == [[1, 1, 4]] * 3 + [[1, 0, 4]] * 3
  assert [s["kv_len"] for s in log.steps] == [8, 8, 64, 64, 64, 64]
  prefill, kv_len = [4, 4, 4, 0, 0, 0], [8, 8, 64, 64, 64, 64]
  assert [s["cost"] for s in log.steps] == [
      dict(fixed=1, decode_rows=1, prefill_tokens=n, decode_kv=kv, prefill_kv=n * kv,
           capacity_pairs=0, expert_rows=0, a2a_rows=0, kept_pairs=0, busiest_shard_pairs=0)
      for n, kv in zip(prefill, kv_len)]
  dt = [sum(COEF[f] * v for f, v in s["cost"].items() if f in COEF) for s in log.steps]
  assert dt == [Fraction(x, 1024) for x in (232, 232, 400, 208, 208, 208)]
  assert [s["dt"] for s in log.steps] == [float(d) for d in dt]
  assert log.steps[0]["t"] == 0.5  # the idle engine jumps to the arrival
  # The other step fields: rows and tokens, and KV blocks of 4 tokens: admission holds the whole
  # prompt (3 blocks); the decode feeding position q needs blocks for q + 1 tokens: 4 at q = 12.
  assert [(s["decode"], s["prefill_rows"], s["prefill_tokens"]) for s in log.steps] == (
      [(0, 1, 4), (0, 1, 4), (0, 1, 2), (1, 0, 0), (1, 0, 0), (1, 0, 0)])
  assert [s["kv_blocks_used"] for s in log.steps] == [3, 3, 3, 3, 3, 4]
  assert [s["slots_used"] for s in log.steps] == [1] * 6  # the last step's finisher counts
  assert [s["finished"] for s in log.steps] == [[]] * 5 + [[0]]

  rec = log.requests[0]
  t_first = Fraction(1, 2) + dt[0] + dt[1] + dt[2]
  times = [t_first, t_first + dt[3], t_first + dt[3] + dt[4], t_first + sum(dt[3:])]
  assert rec["token_times"] == [float(t) for t in times]
  ttft, tpot, e2el, itls = latency.per_request(rec)
  assert ttft == float(Fraction(864, 1024))
  assert tpot == float(Fraction(208, 1024))  # 3 gaps after the first token
  assert e2el == float(Fraction(864 + 3 * 208, 1024))
  assert itls == [float(d) for d in dt[3:]]
  summary = latency.summarize(log.requests)
  assert summary["ttft_ms"]["mean"] == pytest.approx(864 / 1024 * 1e3, rel=1e-12)
  assert summary["tpot_ms"]["mean"] == pytest.approx(208 / 1024 * 1e3, rel=1e-12)
