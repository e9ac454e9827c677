"""Every bad request kind is rejected with its reason, and the run serves the rest."""
import math

import pytest

from moe_serve.serving.stream import request as request_lib
from moe_serve.serving.stream.request import Request, SamplingParams
from tests.helpers import serving as serving_helpers
from tests.helpers.serving import tiny_serve_cfg

GOOD = dict(prompt=[1, 50, 60, 70], max_new_tokens=4, domain="add")

# (changes to a good request, words the reason must contain)
BAD = {
    "empty prompt": (dict(prompt=[]), "empty prompt"),
    "token outside vocab": (dict(prompt=[1, 5, 260]), "outside the vocabulary"),
    "negative token": (dict(prompt=[1, -3]), "outside the vocabulary"),
    "too long": (dict(prompt=[1] * 60, max_new_tokens=5), "exceeds model.max_len=64"),
    "max_new_tokens 0": (dict(max_new_tokens=0), "max_new_tokens=0"),
    "max_new_tokens < 0": (dict(max_new_tokens=-2), "max_new_tokens=-2"),
    "negative temperature": (dict(sampling=SamplingParams(temperature=-0.5)), "temperature=-0.5"),
    "top_p 0": (dict(sampling=SamplingParams(top_p=0.0)), "top_p=0.0"),
    "top_p > 1": (dict(sampling=SamplingParams(top_p=1.5)), "top_p=1.5"),
    "nan arrival": (dict(arrival=math.nan), "arrival=nan"),
    "inf arrival": (dict(arrival=math.inf), "arrival=inf"),
    "unknown domain": (dict(domain="poetry"), "unknown domain 'poetry'"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_check_names_the_problem(name):
  changes, words = BAD[name]
  limits = request_lib.limits_from_config(tiny_serve_cfg())
  req = Request(id=1, **{**GOOD, **changes})
  assert words in request_lib.check(req, limits, seen_ids=set())
  assert request_lib.check(Request(id=1, **GOOD), limits, seen_ids=set()) is None


def test_duplicate_and_over_budget():
  cfg = tiny_serve_cfg(kv_num_blocks=2)  # 32 KV tokens
  limits = request_lib.limits_from_config(cfg)
  assert "duplicate id=1" in request_lib.check(Request(id=1, **GOOD), limits, {1})
  big = Request(id=2, prompt=[1] * 30, max_new_tokens=10, domain="add")
  assert "raise serve.kv_num_blocks" in request_lib.check(big, limits, set())


def test_run_rejects_bad_requests_and_serves_the_rest(tiny_model):
  cfg = tiny_serve_cfg()
  good = [Request(id=i, arrival=0.01 * i, **GOOD) for i in range(3)]
  bad = [Request(id=10 + j, **{**GOOD, **BAD[name][0]}) for j, name in enumerate(sorted(BAD))]
  dup = Request(id=0, **GOOD)
  engine = serving_helpers.engine(cfg, tiny_model)
  log = engine.run(good + bad + [dup])
  finished = [r for r in log.requests if r["status"] == "finished"]
  rejected = [r for r in log.requests if r["status"] == "rejected"]
  assert sorted(r["id"] for r in finished) == [0, 1, 2]
  assert all(r["output_len"] == 4 or r["finish_reason"] == "eos" for r in finished)
  assert len(rejected) == len(BAD) + 1
  by_id = {r["id"]: r["reason"] for r in rejected if r["id"] != 0}
  for j, name in enumerate(sorted(BAD)):
    assert BAD[name][1] in by_id[10 + j], name
  assert any("duplicate id=0" in r["reason"] for r in rejected if r["id"] == 0)
