"""Drop attribution on a hand-built routing record, and the writers' formats."""
import csv
import glob
import json

import numpy as np

from moe_serve.metrics import routing, table, writers


def test_drops_by_request_hand_worked():
  # Tokens: 2 decode rows (requests 7, idle), then a chunk of 4: request 5 x3 + padding.
  seg_T = np.array([7, -1, 5, 5, 5, -1])
  kept0 = np.array([[1, 0], [0, 0], [1, 1], [0, 1], [0, 0], [0, 0]], bool)  # layer 0, K=2
  kept1 = np.array([[1, 1], [0, 0], [1, 1], [1, 1], [1, 0], [0, 0]], bool)
  assert routing.drops_by_request([kept0, kept1], seg_T) == {5: [3, 1], 7: [1, 0]}
  np.testing.assert_array_equal(routing.drops_per_layer([kept0, kept1], seg_T), [4, 1])


def test_jsonl_is_canonical(tmp_path):
  recs = [{"b": 1.5, "a": [1, 2]}, {"a": None}]
  writers.write_jsonl(tmp_path / "x.jsonl", recs)
  assert (tmp_path / "x.jsonl").read_text() == '{"a":[1,2],"b":1.5}\n{"a":null}\n'
  assert writers.read_jsonl(tmp_path / "x.jsonl") == recs


def _summary():
  from tests.metrics.test_latency import RECORDS  # pylint: disable=import-outside-toplevel
  from moe_serve.metrics import latency  # pylint: disable=import-outside-toplevel
  return latency.summarize(RECORDS, 600, None)


def test_csv_and_table(tmp_path):
  s = _summary()
  writers.write_summary_csv(tmp_path / "s.csv", s)
  rows = dict(csv.reader(open(tmp_path / "s.csv")))
  assert float(rows["ttft_ms/median"]) == 500.0
  assert float(rows["per_domain/x/output_throughput"]) == 3.5
  text = table.format_summary(s)
  assert "3 completed, 1 rejected" in text and "ttft_ms" in text and "500.00" in text
  assert f"goodput {s['goodput']:.2f} req/s (ttft <= 600 ms)" in text
  s["slo"] = {"ttft_ms": None, "tpot_ms": None}
  assert "goodput: no SLO given" in table.format_summary(s)
  json.dumps(s)  # the summary is JSON-serialisable as is


def test_tensorboard_writes_events(tmp_path):
  tb = writers.TensorBoard(str(tmp_path / "tb"))
  tb.step(dict(step=0, t=0.0, dt=0.1, decode=2, prefill_tokens=8, slots_used=3,
               kv_blocks_used=4, waiting=0))
  tb.summary(_summary())
  tb.close()
  assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
