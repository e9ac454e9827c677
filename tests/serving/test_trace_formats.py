"""Trace importers (serving/stream/trace_formats.py, docs/traces.md) on the sample files of each
format
under tests/fixtures/traces (written by us), their malformed lines, and the prompt sources."""
import os

import numpy as np
import pytest

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.data import text, tokenizer
from moe_serve.serving.stream import prompt_sources, trace_formats, workload
from moe_serve.serving import run as run_lib

_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "traces")
SHAREGPT = os.path.join(_DIR, "sharegpt.json")
PROMPT_ONLY = os.path.join(_DIR, "sharegpt_prompt_only.jsonl")
BURSTGPT = os.path.join(_DIR, "burstgpt.csv")
AZURE = os.path.join(_DIR, "azure_conv.csv")
TOK = tokenizer.BYTES


def _cfg(output_len=None, **workload_changes):
  cfg = serve_default.get_config("size=tiny")
  cfg.workload.update(workload_changes)
  if output_len is not None:
    cfg.workload.output_len.update(output_len)
  return config_lib.validate_serve(config_lib.validate(cfg))


def _load(path, fmt, skipped=None, source="synthetic", **changes):
  wl = _cfg(trace=path, trace_format=fmt, **changes).workload
  source = prompt_sources.exact_length(prompt_sources.make(source))
  return trace_formats.load(wl, path, fmt, TOK, source, skipped)


def test_sharegpt_first_human_turn_is_the_prompt_and_the_reply_sets_max_new_tokens():
  reqs, counts = _load(SHAREGPT, "sharegpt", output_len=dict(kind="fixed", value=5))
  assert counts == {"left_out": 0, "prompt_only": 1}  # c1 has no reply: served all the same
  prompts = ["What is 12+34?", "Say hello.", "Sort the letters dcba.", "Write a line of prose."]
  replies = [len("12+34=46"), 5, len("abcd"), len("The river ran slowly past the mill.")]
  assert [list(r.prompt) for r in reqs] == [TOK.encode(p) for p in prompts]
  assert [r.max_new_tokens for r in reqs] == replies  # c1's from workload.output_len
  # No times in ShareGPT: the workload's arrival process, from its seed.
  wl = _cfg().workload
  expected = workload.arrival_times(wl.arrival, 4, np.random.default_rng(wl.seed))
  np.testing.assert_allclose([r.arrival for r in reqs], expected)
  assert [r.id for r in reqs] == [0, 1, 2, 3]
  assert all(r.domain in wl.mix for r in reqs)


def test_prompt_only_sharegpt_is_served_with_drawn_output_lengths_and_counted():
  # p0, p2: no reply; p1: an empty prompt (left out); p3: a reply of 9 bytes.
  reqs, counts = _load(PROMPT_ONLY, "sharegpt", output_len=dict(kind="uniform", low=3, high=4),
                       length_scale=0.5)
  assert counts == {"left_out": 1, "prompt_only": 2}
  # BOS + 12, 23, 13 bytes, halved: 6.5 -> 6 (half to even), 12, 7 tokens with BOS.
  assert [TOK.decode(r.prompt) for r in reqs] == ["What ", "Reverse the", "Name a"]
  lens = [r.max_new_tokens for r in reqs]
  assert lens[0] in (3, 4) and lens[1] in (3, 4) and lens[2] == 4  # drawn unscaled; 9 * 0.5
  cfg = _cfg(trace=PROMPT_ONLY, trace_format="sharegpt", max_requests=1)
  counts = {}
  assert len(run_lib.make_requests(cfg, counts=counts)) == 1 and counts["prompt_only"] == 1


@pytest.mark.parametrize("path, fmt, times, prompt_lens, output_lens", [
    (BURSTGPT, "burstgpt", [0, 0.5, 4.25, 7], [12, 20, 30, 5], [6, 9, 4, 11]),  # a 0-reply row out
    (AZURE, "azure", [0, 0.25, 1.0, 3.5], [14, 22, 9, 40], [7, 3, 12, 5]),
])
@pytest.mark.parametrize("source", ["synthetic", "eval", "corpus"])
def test_token_count_traces_get_prompts_of_exactly_the_given_length(path, fmt, times, prompt_lens,
                                                                    output_lens, source):
  reqs, counts = _load(path, fmt, source=source)
  assert counts == {"left_out": 1 if fmt == "burstgpt" else 0, "prompt_only": 0}
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


_HUMAN = ('{{"conversations": [{{"from": "human", "value": "{}"}}, '
          '{{"from": "gpt", "value": "{}"}}]}}')


@pytest.mark.parametrize("name, fmt, data, line, words", [
    # The JSON escape of a lone surrogate: valid JSON, not UTF-8 text (no tokenizer encodes it).
    ("s.json", "sharegpt", "[\n" + _HUMAN.format("a", "b") + ",\n" + _HUMAN.format("x\\ud800", "b")
     + "\n]", 3,
     r"conversations\[0\]\.value is not UTF-8 text: lone surrogate U\+D800 at character 1"),
    ("s.jsonl", "sharegpt", _HUMAN.format("a", "b") + "\n" + _HUMAN.format("a", "\\udfff") + "\n",
     2,
     r"conversations\[1\]\.value is not UTF-8 text: lone surrogate U\+DFFF at character 0"),
    ("t.jsonl", "jsonl", '{"arrival": 0, "max_new_tokens": 2, "domain": "add", "prompt": "1+1="}\n'
     '{"arrival": 0, "max_new_tokens": 2, "domain": "add", "prompt": "ab\\ud800"}\n', 2,
     r"prompt is not UTF-8 text: lone surrogate U\+D800 at character 2"),
])
def test_lone_surrogate_is_refused_at_its_line_and_skippable(tmp_path, name, fmt, data, line,
                                                             words):
  path = _write(tmp_path, name, data)
  cfg = _cfg(trace=path, trace_format=fmt)
  with pytest.raises(workload.TraceError, match=rf"^{path}:{line}: {words}"):
    run_lib.make_requests(cfg)
  cfg.workload.skip_bad_lines = True
  skipped = []
  assert len(run_lib.make_requests(cfg, skipped=skipped)) == 1
  assert [s["line"] for s in skipped] == [line] and "not UTF-8" in skipped[0]["reason"]


@pytest.mark.parametrize("name, fmt, data, line, words", [
    ("s.jsonl", "sharegpt", _HUMAN.format("a", "b").encode() + b"\n"
     + _HUMAN.format("caf\xe9", "b").encode("latin-1"), 2,
     r"conversations\[0\]\.value is not UTF-8 text: lone surrogate U\+DCE9 at character 3"),
    ("b.csv", "burstgpt", b"Timestamp,Request tokens,Response tokens\n1,2,3\n2,\xff,3\n", 3,
     r"Request tokens='\\udcff' must be a number"),
])
def test_bytes_that_are_not_utf8_are_refused_at_their_line(tmp_path, name, fmt, data, line, words):
  path = tmp_path / name
  path.write_bytes(data)
  with pytest.raises(workload.TraceError, match=rf"^{path}:{line}: {words}"):
    _load(str(path), fmt)


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
