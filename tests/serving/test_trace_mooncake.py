"""The `mooncake` trace format (serving/stream/trace_formats.py, docs/traces.md) on
tests/fixtures/traces/
mooncake.jsonl (written by us): arrivals from `timestamp` ms, which requests share which token
blocks, scaling by whole blocks, the left-out and bad lines.

The sample, by hand (ids in brackets, tokens of each block at length_scale 1 and 1/64):
  line 1  t=1000  1100 tokens [0, 1, 2]   512 + 512 + 76   8 + 8 + round(76/64)=1   = 17
  line 2  t=1500  1300 tokens [0, 1, 3]   512 + 512 + 276  8 + 8 + round(276/64)=4  = 20
  line 3  t=3000  output_length 0: left out
  line 4  t=4250  1024 tokens [0, 5]      512 + 512        8 + 8                    = 16
  line 5  t=4250  1400 tokens [0, 1, 2]   512 + 512 + 376  8 + 8 + round(376/64)=6  = 22
"""
import os

import numpy as np
import pytest

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.data import tokenizer
from moe_serve.serving.stream import prompt_sources, trace_formats, workload
from moe_serve.serving import run as run_lib

MOONCAKE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "traces",
                        "mooncake.jsonl")


def _load(path=MOONCAKE, skipped=None, source="synthetic", **changes):
  cfg = serve_default.get_config("size=tiny")
  cfg.workload.update(trace=str(path), trace_format="mooncake", **changes)
  wl = config_lib.validate_serve(config_lib.validate(cfg)).workload
  source = prompt_sources.exact_length(prompt_sources.make(source))
  return trace_formats.load(wl, str(path), "mooncake", tokenizer.BYTES, source, skipped)


@pytest.mark.parametrize("source", ["synthetic", "eval"])
def test_equal_hash_ids_are_equal_blocks_and_the_rest_differs(source):
  reqs, counts = _load(source=source)
  assert counts == {"left_out": 1, "prompt_only": 0}  # line 3: output_length 0
  p1, p2, p4, p5 = (list(r.prompt) for r in reqs)
  assert [len(p) for p in (p1, p2, p4, p5)] == [1100, 1300, 1024, 1400]
  assert all(p[0] == tokenizer.BOS and tokenizer.BOS not in p[1:] for p in (p1, p2, p4, p5))
  assert p1[:1024] == p2[:1024]  # ids 0, 1
  assert p1[1024:1100] != p2[1024:1100]  # id 2 against id 3
  assert p4[:512] == p1[:512] and p4[512:1024] != p1[512:1024]  # id 0; id 5 against id 1
  assert p5[:1100] == p1  # ids 0, 1 and the first 76 tokens of id 2, all of line 1's prompt
  assert [r.max_new_tokens for r in reqs] == [640, 128, 1024, 320]
  np.testing.assert_allclose([r.arrival for r in reqs], [0.0, 0.5, 3.25, 3.25])  # ms, from 0
  assert [r.id for r in reqs] == [0, 1, 2, 3]


def test_length_scale_shrinks_every_block_to_the_same_whole_size():
  reqs, _ = _load(length_scale=1 / 64, time_scale=2.0)  # blocks of 8 tokens
  p1, p2, p4, p5 = (list(r.prompt) for r in reqs)
  assert [len(p) for p in (p1, p2, p4, p5)] == [17, 20, 16, 22]
  assert p1[:16] == p2[:16] and p1[16:] != p2[16:17] and p5[:17] == p1
  assert p4[:8] == p1[:8] and p4[8:16] != p1[8:16]
  assert [r.max_new_tokens for r in reqs] == [10, 2, 16, 5]  # 640/64, 128/64, ...
  np.testing.assert_allclose([r.arrival for r in reqs], [0.0, 1.0, 6.5, 6.5])


def test_an_id_is_one_run_of_tokens_wherever_it_stands(tmp_path):
  path = tmp_path / "m.jsonl"
  line = '{{"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": {}}}\n'
  path.write_text(line.format("[0, 1]") + line.format("[1, 0]"))
  (a, b), _ = _load(path)
  # BOS takes the place of the first token of the first block (Mooncake's ids are prefix
  # hashes: in its traces an id never stands at two positions).
  assert a.prompt[513:] == b.prompt[1:512] and a.prompt[1:512] == b.prompt[513:]


@pytest.mark.parametrize("line, words", [
    ('{"timestamp": 0, "input_length": 1025, "output_length": 1, "hash_ids": [0, 1]}',
     r"input_length=1025 needs 3 hash_ids \(one per 512 tokens\), got 2"),
    ('{"timestamp": 0, "input_length": 512, "output_length": 1, "hash_ids": [0, 1]}',
     r"input_length=512 needs 1 hash_ids \(one per 512 tokens\), got 2"),
    ('{"timestamp": 0, "input_length": 0, "output_length": 1, "hash_ids": []}',
     "input_length=0 must be a JSON integer >= 1"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1.5, "hash_ids": [0]}',
     "output_length=1.5 must be a JSON integer >= 0"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [-1]}',
     r"hash_ids=\[-1\] must be a list of JSON integers >= 0"),
    ('{"timestamp": "soon", "input_length": 5, "output_length": 1, "hash_ids": [0]}',
     'timestamp="soon" must be a finite number of ms >= 0'),
    ('{"timestamp": 0, "input_length": 5', "not valid JSON"),
    ('[1, 2]', "expected {\"timestamp\""),
])
def test_bad_lines_are_named_by_file_and_line(tmp_path, line, words):
  path = tmp_path / "m.jsonl"
  path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [0]}\n\n'
                  + line + "\n")
  with pytest.raises(workload.TraceError, match=rf"m.jsonl:3: .*{words}"):
    _load(path)
  skipped = []
  reqs, _ = _load(path, skipped=skipped)
  assert len(reqs) == 1 and [s["line"] for s in skipped] == [3]


def test_serve_config_takes_the_format_and_reports_what_was_left_out():
  cfg = serve_default.get_config("size=tiny")
  cfg.workload.update(trace=MOONCAKE, trace_format="mooncake", length_scale=1 / 64, max_requests=2)
  counts = {}
  reqs = run_lib.make_requests(config_lib.validate_serve(cfg), counts=counts)
  assert [len(r.prompt) for r in reqs] == [17, 20] and counts["left_out"] == 0  # cap before line 3
