"""The report builds from a small committed sweep (tests/experiments/fixtures/tiny_sweep, made by
`scripts/sweep.py --config=configs/study_default.py:size=tiny`)."""
import csv
import os
import shutil

from moe_serve.experiments import report

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_sweep")


def test_report_from_fixture_sweep(tmp_path):
  workdir = tmp_path / "sweep"
  shutil.copytree(FIXTURE, workdir)
  text = report.build(str(workdir), log=lambda *_: None)

  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["scope"] for r in rows] == ["batch", "none"]
  by_scope = {r["scope"]: r for r in rows}
  # Dropless serving is batch invariant: every repeat equals its solo reference, bitwise.
  assert float(by_scope["none"]["bitwise_with_solo"]) == 1.0
  assert float(by_scope["none"]["target_drop_rate"]) == 0.0
  assert float(by_scope["batch"]["traffic_drop_rate"]) > 0.0
  assert "| batch | 1 | 40 |" in text and "Cost of batch invariance" in text
  # Bootstrap intervals over targets: a mean inside its interval.
  m, lo, hi = (float(by_scope["batch"][f"unique_completions_ci_{s}"]) for s in ("mean", "low", "high"))
  assert lo <= m <= hi and m == float(by_scope["batch"]["unique_completions_mean"])
  forensic = text.split("## Divergence forensics")[1]
  assert "| batch | 1 | routing |" in forensic and "| none |" not in forensic
  plots = sorted(os.listdir(workdir / "plots"))
  assert plots == ["agreement_vs_load.png", "divergence_by_setting.png", "per_domain_exact_match.png",
                   "quality_vs_capacity_factor.png", "serving_vs_load.png",
                   "unique_vs_capacity_factor.png"]
  for name in plots:
    with open(workdir / "plots" / name, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_invariance_cost_is_relative_to_batch():
  rows = [dict(scope="batch", capacity_factor=1.0, load=40.0, output_throughput=100.0,
               ttft_ms_median=10.0, tpot_ms_median=5.0, step_wall_ms_median=2.0,
               exact_match_mean=0.5),
          dict(scope="none", capacity_factor=1.0, load=40.0, output_throughput=80.0,
               ttft_ms_median=20.0, tpot_ms_median=5.0, step_wall_ms_median=3.0,
               exact_match_mean=0.75)]
  (cost,) = report.invariance_cost(rows)
  assert cost["throughput_vs_batch"] == 0.8 and cost["ttft_vs_batch"] == 2.0
  assert cost["step_wall_vs_batch"] == 1.5 and cost["exact_match_minus_batch"] == 0.25


def test_extra_setting_axes_get_columns_and_their_own_batch_reference():
  base = dict(capacity_factor=1.0, load=40.0, router="topk", mode="traffic", co_domains=None,
              output_throughput=100.0, ttft_ms_median=10.0, tpot_ms_median=5.0,
              step_wall_ms_median=2.0, exact_match_mean=0.5)
  rows = [dict(base, scope="batch", priority="token"),
          dict(base, scope="batch", priority="position", output_throughput=50.0),
          dict(base, scope="none", priority="token", output_throughput=80.0),
          dict(base, scope="none", priority="position", output_throughput=80.0)]
  assert report.varying(rows) == ["scope", "priority"]
  cost = {c["priority"]: c["throughput_vs_batch"] for c in report.invariance_cost(rows)}
  assert cost == {"token": 0.8, "position": 1.6}
