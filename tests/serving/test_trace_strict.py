"""Traces are strict: every bad line is named by file:line, or skipped and listed on request.

JSON integers where an integer is meant (not 4.9, "4", true), finite numbers, UTF-8 text, no
unknown field (a misspelt `temprature` must not pass), no empty prompt, no empty trace.
"""
import json

import pytest

from configs import serve_default
from moe_serve.serving import run as run_lib
from moe_serve.serving.stream import workload

GOOD = {"arrival": 0.0, "max_new_tokens": 2, "domain": "add", "prompt": "1+1="}


def _line(**changes):
  rec = {**GOOD, **changes}
  return json.dumps({k: v for k, v in rec.items() if v is not _DROP}).encode()


_DROP = object()


@pytest.mark.parametrize("bad, words", [
    (_line(max_new_tokens=4.9), "max_new_tokens=4.9 must be a JSON integer > 0"),
    (_line(max_new_tokens="4"), 'max_new_tokens="4" must be a JSON integer'),
    (_line(max_new_tokens=True), "max_new_tokens=true must be a JSON integer"),
    (_line(id=1.0), "id=1.0 must be a JSON integer"),
    (_line(seed=-1), "seed=-1 must be a JSON integer in"),
    (b'{"arrival": NaN, "max_new_tokens": 2, "domain": "add", "prompt": "x"}',
     "NaN is not a finite number"),
    (_line(arrival=-1), "arrival=-1 must be a finite number of seconds >= 0"),
    (_line(temprature=0.5), r"unknown fields \['temprature'\]"),
    (_line(prompt=""), 'prompt="" must be a non-empty string'),
    (_line(prompt=_DROP, tokens=[]), "tokens=\\[\\] must be a non-empty list"),
    (_line(prompt=_DROP, tokens=[1, 2.5]), "tokens=\\[1, 2.5\\] must be a non-empty list of JSON "
                                           "integers"),
    (_line(top_p=0), "top_p=0 must be a number in \\(0, 1\\]"),
    (_line(domain=3), "domain=3 must be a non-empty string"),
    ('{"arrival": 0, "max_new_tokens": 2, "domain": "add", "prompt": "caf\xe9"}'.encode("latin-1"),
     "not UTF-8 text"),
    (b'{"arrival": 0, "max_new_tokens": 2, "domain": "a\\udc80d", "prompt": "x"}',
     r"domain is not UTF-8 text: lone surrogate U\+DC80 at character 1"),
])
def test_bad_line_is_named_by_file_and_line(tmp_path, bad, words):
  path = tmp_path / "t.jsonl"
  path.write_bytes(_line() + b"\n\n" + bad + b"\n")
  with pytest.raises(workload.TraceError, match=f"t.jsonl:3: .*{words}"):
    workload.load_trace(path)


def test_empty_trace_is_an_error(tmp_path):
  path = tmp_path / "empty.jsonl"
  path.write_text("\n  \n")
  with pytest.raises(workload.TraceError, match="empty.jsonl: the trace holds no request"):
    workload.load_trace(path)


def test_skip_bad_lines_serves_the_rest_and_lists_the_skipped(tmp_path):
  path = tmp_path / "mixed.jsonl"
  path.write_bytes(b"\n".join([_line(), _line(temprature=1.0), b"{oops", _line(arrival=0.5)]))
  cfg = serve_default.get_config("size=tiny")
  cfg.workload.update(trace=str(path), skip_bad_lines=True)
  skipped = []
  requests = run_lib.make_requests(cfg, skipped=skipped)
  assert [r.arrival for r in requests] == [0.0, 0.5]
  assert [s["line"] for s in skipped] == [2, 3]
  assert "temprature" in skipped[0]["reason"] and "not valid JSON" in skipped[1]["reason"]
  cfg.workload.skip_bad_lines = False
  with pytest.raises(workload.TraceError, match="mixed.jsonl:2: unknown fields"):
    run_lib.make_requests(cfg)
  path.write_bytes(b"{oops\n")
  cfg.workload.skip_bad_lines = True
  with pytest.raises(workload.TraceError, match=r"no request \(1 bad lines skipped\)"):
    run_lib.make_requests(cfg, skipped=[])
