"""Latency metrics on a hand-built event log; every expected number is worked out by hand below."""
import pytest

from moe_serve.metrics import latency


def _rec(rid, arrival, times, domain, prompt_len=4):
  return dict(id=rid, status="finished", domain=domain, arrival=arrival, first_token=times[0],
              finish=times[-1], output_len=len(times), prompt_len=prompt_len, token_times=times,
              preemptions=0)


RECORDS = [
    # TTFT 0.5, E2EL 1.0, TPOT (1.0 - 0.5) / 2 = 0.25, ITLs 0.2, 0.3
    _rec(0, 0.0, [0.5, 0.7, 1.0], "x"),
    # TTFT 1.0, E2EL 1.0, one token: no TPOT, no ITL
    _rec(1, 0.2, [1.2], "y"),
    # TTFT 0.1, E2EL 1.0, TPOT 0.9 / 3 = 0.3, ITLs 0.4, 0.1, 0.4
    _rec(2, 1.0, [1.1, 1.5, 1.6, 2.0], "x"),
    dict(id=3, status="rejected", reason="empty prompt", domain="x", arrival=0.0),
]
approx = lambda x: pytest.approx(x, abs=1e-9)


def test_hand_worked_summary():
  s = latency.summarize(RECORDS)
  assert s["completed"] == 3 and s["rejected"] == 1
  assert s["reject_reasons"] == {"empty prompt": 1}
  assert s["duration_s"] == approx(2.0)  # first arrival 0.0 to last finish 2.0
  assert s["request_throughput"] == approx(1.5)  # 3 / 2.0
  assert s["output_throughput"] == approx(4.0)  # (3 + 1 + 4) / 2.0
  assert s["input_tokens"] == 12 and s["output_tokens"] == 8
  # TTFT ms [500, 1000, 100]: sorted [100, 500, 1000]; p90 at rank 1.8 -> 500 + 0.8 * 500.
  assert s["ttft_ms"] == {"mean": approx(1600 / 3), "median": approx(500), "p90": approx(900),
                          "p99": approx(990)}
  # TPOT ms [250, 300]: p90 at rank 0.9 -> 250 + 0.9 * 50.
  assert s["tpot_ms"] == {"mean": approx(275), "median": approx(275), "p90": approx(295),
                          "p99": approx(299.5)}
  # ITL ms pooled [200, 300, 400, 100, 400]: sorted [100, 200, 300, 400, 400].
  assert s["itl_ms"] == {"mean": approx(280), "median": approx(300), "p90": approx(400),
                         "p99": approx(400)}
  assert s["e2el_ms"] == {"mean": approx(1000), "median": approx(1000), "p90": approx(1000),
                          "p99": approx(1000)}
  assert s["goodput"] is None  # no SLO given


@pytest.mark.parametrize("ttft, tpot, want", [
    (600, 260, 0.5),  # only request 0 meets both (1: TTFT 1000; 2: TPOT 300)
    (600, None, 1.0),  # requests 0 and 2
    (None, 260, 1.0),  # requests 0 and 1 (one token: TPOT counts as 0, as in vLLM)
    (50, None, 0.0),
])
def test_goodput(ttft, tpot, want):
  assert latency.summarize(RECORDS, ttft, tpot)["goodput"] == approx(want)


def test_per_domain_uses_the_run_duration():
  d = latency.summarize(RECORDS)["per_domain"]
  assert sorted(d) == ["x", "y"]
  assert d["x"]["completed"] == 2 and d["x"]["output_throughput"] == approx(3.5)  # 7 / 2.0
  assert d["x"]["ttft_ms"]["mean"] == approx(300)
  assert d["y"]["tpot_ms"]["mean"] is None and d["y"]["itl_ms"]["p99"] is None


def test_per_priority_class():
  recs = [dict(r, priority=i % 2) for i, r in enumerate(RECORDS)]
  p = latency.summarize(recs)["per_priority"]
  assert sorted(p) == ["0", "1"]
  assert p["0"]["completed"] == 2 and p["0"]["ttft_ms"]["mean"] == approx(300)  # requests 0, 2
  assert p["1"]["completed"] == 1 and p["1"]["ttft_ms"]["mean"] == approx(1000)


def test_empty_run():
  s = latency.summarize([RECORDS[3]])
  assert s["completed"] == 0 and s["request_throughput"] is None and s["ttft_ms"]["mean"] is None
