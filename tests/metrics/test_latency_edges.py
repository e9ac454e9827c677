"""Latency metric edges the hand-worked summary in test_latency.py does not reach: a two-token
request's TPOT, an SLO met exactly, and records without a priority (one request class, 0).

Times are binary fractions, so every figure is exact.
"""
from moe_serve.metrics import latency


def _rec(rid, arrival, times, **extra):
  return dict(id=rid, status="finished", domain="x", arrival=arrival, first_token=times[0],
              finish=times[-1], output_len=len(times), prompt_len=3, token_times=times,
              preemptions=0, **extra)


def test_two_tokens_have_a_tpot():
  ttft, tpot, e2el, itls = latency.per_request(_rec(0, 0.0, [0.5, 0.75]))
  assert (ttft, tpot, e2el, itls) == (0.5, 0.25, 0.75, [0.25])  # one gap after the first token


def test_an_slo_met_exactly_counts_as_good():
  # TTFT 500 ms, TPOT (1.0 - 0.5) / 2 = 250 ms; duration 1 s.
  recs = [_rec(0, 0.0, [0.5, 0.75, 1.0], priority=0)]
  assert latency.summarize(recs, slo_ttft_ms=500.0, slo_tpot_ms=250.0)["goodput"] == 1.0
  assert latency.summarize(recs, slo_ttft_ms=500.0, slo_tpot_ms=249.0)["goodput"] == 0.0
  assert latency.summarize(recs, slo_ttft_ms=499.0, slo_tpot_ms=250.0)["goodput"] == 0.0


def test_records_without_a_priority_are_class_0():
  recs = [_rec(0, 0.0, [0.5]), _rec(1, 0.0, [0.25, 0.5], priority=2)]
  classes = latency.summarize(recs)["per_priority"]
  assert sorted(classes) == ["0", "2"]
  assert classes["0"]["completed"] == 1 and classes["2"]["completed"] == 1
