"""benchmark.json (metrics/benchmark.py) against vLLM's field names, on a run worked by hand.

Three finished requests and one rejected (times in s):
  A: arrival 0.0, tokens at 0.1 0.2 0.3 0.4, prompt 10 -> TTFT 100, TPOT 100, E2EL 400 ms
  B: arrival 0.2, one token at 0.5, prompt 5            -> TTFT 300, (TPOT 0 for goodput), E2EL 300
  C: arrival 0.3, tokens at 0.45 0.7 0.95, prompt 7     -> TTFT 150, TPOT 250, E2EL 650
Duration 0.95 s (first arrival to last finish); 3 requests, 8 output and 22 input tokens.
"""
import math

import pytest

from moe_serve import config as config_lib
from moe_serve.metrics import benchmark, latency


def _rec(rid, arrival, times, prompt_len, status="finished"):
  return dict(id=rid, status=status, arrival=arrival, first_token=times[0] if times else None,
              finish=times[-1] if times else None, output_len=len(times), token_times=times,
              prompt_len=prompt_len, domain="add", priority=0, preemptions=0,
              reason=None if status == "finished" else "too long")


RECORDS = [_rec(0, 0.0, [0.1, 0.2, 0.3, 0.4], 10), _rec(1, 0.2, [0.5], 5),
           _rec(2, 0.3, [0.45, 0.7, 0.95], 7), _rec(3, 0.1, [], 9, status="rejected")]

# By hand: means, medians, population std and linear-interpolated percentiles (ms).
EXPECTED = {
    "duration": 0.95, "completed": 3, "failed": 1,
    "total_input_tokens": 22, "total_output_tokens": 8,
    "request_throughput": 3 / 0.95, "output_throughput": 8 / 0.95,
    "total_token_throughput": 30 / 0.95,
    "mean_ttft_ms": 550 / 3, "median_ttft_ms": 150, "std_ttft_ms": math.sqrt(21666.667 / 3),
    "p50_ttft_ms": 150, "p99_ttft_ms": 150 + 0.98 * 150, "p99.9_ttft_ms": 150 + 0.998 * 150,
    "mean_tpot_ms": 175, "median_tpot_ms": 175, "std_tpot_ms": 75,
    "p50_tpot_ms": 175, "p99_tpot_ms": 100 + 0.99 * 150, "p99.9_tpot_ms": 100 + 0.999 * 150,
    "mean_itl_ms": 160, "median_itl_ms": 100, "std_itl_ms": math.sqrt(5400),
    "p50_itl_ms": 100, "p99_itl_ms": 250, "p99.9_itl_ms": 250,
    "mean_e2el_ms": 450, "median_e2el_ms": 400, "std_e2el_ms": math.sqrt(65000 / 3),
    "p50_e2el_ms": 400, "p99_e2el_ms": 400 + 0.98 * 250, "p99.9_e2el_ms": 400 + 0.998 * 250,
}


def test_fields_and_values_match_the_hand_worked_run():
  out = benchmark.result(RECORDS, percentiles=(50, 99, 99.9), metadata={"backend": "moe_serve"})
  assert out["backend"] == "moe_serve"
  assert out["request_goodput"] is None  # no SLO given
  for key, value in EXPECTED.items():
    assert out[key] == pytest.approx(value, rel=1e-4), key
  assert set(out) == set(EXPECTED) | {"backend", "request_goodput"}


@pytest.mark.parametrize("slo, good", [
    (dict(ttft=200, tpot=200, e2el=500), 1),  # B misses TTFT, C misses TPOT
    (dict(e2el=500), 2),  # C misses E2EL
    (dict(ttft=300, tpot=250, e2el=650), 3),  # SLOs are inclusive; B's TPOT counts as 0
    (dict(tpot=99), 1),  # only B (one token) passes
])
def test_goodput_counts_requests_meeting_every_slo(slo, good):
  out = benchmark.result(RECORDS, slo_ms=dict(slo, ttft=slo.get("ttft")))
  assert out["request_goodput"] == pytest.approx(good / 0.95)


def test_default_percentile_is_p99_and_flag_parsing():
  out = benchmark.result(RECORDS)
  assert [k for k in out if k.startswith("p")] == [f"p99_{m}_ms" for m in benchmark.METRICS]
  assert benchmark.parse_percentiles(["50", "99.9"]) == (50.0, 99.9)
  for bad in ("0", "101", "p99"):
    with pytest.raises(config_lib.ConfigError, match="metric_percentiles"):
      benchmark.parse_percentiles([bad])


def test_no_finished_request_reports_zeros_as_vllm():
  out = benchmark.result(RECORDS[3:])
  assert out["completed"] == 0 and out["failed"] == 1
  assert out["mean_ttft_ms"] == 0 and out["request_throughput"] == 0


def test_summary_goodput_takes_the_e2el_slo_too():
  assert latency.summarize(RECORDS, slo_e2el_ms=500)["goodput"] == pytest.approx(2 / 0.95)
  assert latency.summarize(RECORDS, 200, 200, 500)["goodput"] == pytest.approx(1 / 0.95)
