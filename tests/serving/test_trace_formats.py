"""Trace importers (serving/trace_formats.py, docs/traces.md) on the sample files of each format
under tests/fixtures/traces (written by us), their malformed lines, and the prompt sources."""
import os

import numpy as np
import pytest

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.data import text, tokenizer
from moe_serve.serving import prompt_sources, trace_formats, workload
from moe_serve.serving import run as run_lib

_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "traces")
SHAREGPT = os.path.join(_DIR, "sharegpt.json")
BURSTGPT = os.path.join(_DIR, "burstgpt.csv")
AZURE = os.path.join(_DIR, "azure_conv.csv")
TOK = tokenizer.BYTES


def _cfg(**workload_changes):
  cfg = serve_default.get_config("size=tiny")
  cfg.workload.update(workload_changes)
  return config_lib.validate_serve(config_lib.validate(cfg))


def _load(path, fmt, skipped=None, source="synthetic", **changes):
  wl = _cfg(trace=path, trace_format=fmt, **changes).workload
  source = prompt_sources.exact_length(prompt_sources.make(source))
  return trace_formats.load(wl, path, fmt, TOK, source, skipped)


def test_sharegpt_first_human_turn_is_the_prompt_and_the_reply_sets_max_new_tokens():
  reqs, left_out = _load(SHAREGPT, "sharegpt")
  assert left_out == 1  # c1 has no reply
  prompts = ["What is 12+34?", "Sort the letters dcba.", "Write a line of prose."]
  replies = ["12+34=46", "abcd", "The river ran slowly past the mill."]
  assert [list(r.prompt) for r in reqs] == [TOK.encode(p) for p in prompts]
  assert [r.max_new_tokens for r in reqs] == [len(r.encode()) for r in replies]
  # No times in ShareGPT: the workload's arrival process, from its seed.
  wl = _cfg().workload
  expected = workload.arrival_times(wl.arrival, 3, np.random.default_rng(wl.seed))
  np.testing.assert_allclose([r.arrival for r in reqs], expected)
  assert [r.id for r in reqs] == [0, 1, 2]
  assert all(r.domain in wl.mix for r in reqs)


@pytest.mark.parametrize("path, fmt, times, prompt_lens, output_lens", [
    (BURSTGPT, "burstgpt", [0, 0.5, 4.25, 7], [12, 20, 30, 5], [6, 9, 4, 11]),  # a 0-reply row out
    (AZURE, "azure", [0, 0.25, 1.0, 3.5], [14, 22, 9, 40], [7, 3, 12, 5]),
])
@pytest.mark.parametrize("source", ["synthetic", "eval", "corpus"])
def test_token_count_traces_get_prompts_of_exactly_the_given_length(path, fmt, times, prompt_lens,
                                                                    output_lens, source):
  reqs, left_out = _load(path, fmt, source=source)
  assert left_out == (1 if fmt == "burstgpt" else 0)
  np.testing.assert_allclose([r.arrival for r in reqs], times, atol=1e-6)
  assert [len(r.prompt) for r in reqs] == prompt_lens
  assert [r.max_new_tokens for r in reqs] == output_lens
  assert all(r.prompt[0] == tokenizer.BOS and tokenizer.BOS not in r.prompt[1:] for r in reqs)


def test_time_and_length_scale_and_the_request_cap():
  reqs, _ = _load(BURSTGPT, "burstgpt", time_scale=0.5, length_scale=0.5, max_requests=3)
  np.testing.assert_allclose([r.arrival for r in reqs], [0, 0.25, 2.125])
  assert [len(r.prompt) for r in reqs] == [6, 10, 15]
  assert [r.max_new_tokens for r in reqs] == [3, 4, 2]  # round half to even: 4.5 -> 4


def test_corpus_and_eval_sources_give_real_text_of_the_domain():
  rng = np.random.default_rng(0)
  docs = text.documents("prose")
  for kind in ("eval", "corpus"):
    source = prompt_sources.make(kind)
    assert "+" in TOK.decode(source("add", 16, rng))
    prose = TOK.decode(source("prose", 40, rng))
    assert len(prose) >= 8 and any(prose in body for body in docs.values()), prose


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize("name, fmt, text, line, words", [
    ("b.csv", "burstgpt", "Timestamp,Request tokens,Response tokens\n1,2,3\nsoon,2,3\n", 3,
     "Timestamp='soon' is not a time"),
    ("b.csv", "burstgpt", "Timestamp,Request tokens,Response tokens\n1,2,3\n2,2.5,3\n", 3,
     "Request tokens='2.5' must be a whole number"),
    ("b.csv", "burstgpt", "Timestamp,Request tokens,Response tokens\n1,2,3\n2,2\n", 3,
     "expected 3 columns"),
    ("b.csv", "burstgpt", "Time,Request tokens,Response tokens\n1,2,3\n", 1,
     r"missing \['Timestamp'\]"),
    ("a.csv", "azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,1,2\n"
     "2023-11-16 25:00:00,1,2\n", 3, "TIMESTAMP='2023-11-16 25:00:00' is not a time"),
    ("a.csv", "azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5,-1,2\n", 2,
     "ContextTokens='-1' must be a whole number >= 0"),
    ("s.json", "sharegpt", '[\n{"conversations": [{"from": "human", "value": "a"},\n'
     ' {"from": "gpt", "value": "b"}]},\n{"conversations": [{"from": "human"}]}\n]', 4,
     "expected {\"conversations\""),
    ("s.json", "sharegpt", '[\n{"conversations": []},\n{"conversations": [}\n]', 3,
     "not valid JSON"),
    ("s.jsonl", "sharegpt", '{"conversations": []}\n{"conversations": 3}\n', 2,
     "expected {\"conversations\""),
])
def test_malformed_entries_name_file_and_line(tmp_path, name, fmt, text, line, words):
  path = _write(tmp_path, name, text)
  with pytest.raises(workload.TraceError, match=rf"^{path}:{line}: .*{words}"):
    _load(path, fmt)


def test_bad_lines_skipped_and_listed_on_request(tmp_path):
  path = _write(tmp_path, "b.csv", "Timestamp,Request tokens,Response tokens\n1,4,3\nx,2,3\n"
                "2,5,2\n")
  skipped = []
  reqs, _ = _load(path, "burstgpt", skipped=skipped)
  assert [len(r.prompt) for r in reqs] == [4, 5]
  assert skipped == [{"line": 3, "reason": "Timestamp='x' is not a time"}]


def test_serve_config_picks_format_source_cap_and_scale(tmp_path):
  cfg = _cfg(trace=BURSTGPT, trace_format="burstgpt", prompt_source="eval", max_requests=2)
  reqs = run_lib.make_requests(cfg)
  assert [len(r.prompt) for r in reqs] == [12, 20]
  path = _write(tmp_path, "t.jsonl", "".join(
      f'{{"arrival": {t}, "max_new_tokens": 2, "domain": "add", "prompt": "1+1="}}\n'
      for t in (0, 1, 2)))
  reqs = run_lib.make_requests(_cfg(trace=path, time_scale=2.0, max_requests=2))
  assert [r.arrival for r in reqs] == [0.0, 2.0]
  generated = run_lib.make_requests(_cfg(prompt_source="corpus", num_requests=4))
  assert len(generated) == 4 and all(r.prompt[0] == tokenizer.BOS for r in generated)


@pytest.mark.parametrize("changes, words", [
    (dict(trace_format="burstgpt"), "needs workload.trace=PATH"),
    (dict(prompt_source="random"), "workload.prompt_source"),
    (dict(trace="/nonexistent/t.csv"), "is not a file"),
    (dict(trace=BURSTGPT, time_scale=0.0), "workload.time_scale"),
    (dict(trace=BURSTGPT, max_requests=-1), "workload.max_requests"),
])
def test_config_checks(changes, words):
  with pytest.raises(config_lib.ConfigError, match=words):
    _cfg(**changes)
