"""Arrival processes, length distributions, domain mixes and trace replay."""
import json

import ml_collections
import numpy as np
import pytest

from configs import serve_default
from moe_serve.serving.stream import workload


def _arrival(**kw):
  return ml_collections.ConfigDict(dict(dict(kind="poisson", rate=10.0, burstiness=1.0,
                                             rate_end=10.0), **kw))


def _gaps(arrival, n=20000, seed=0):
  return np.diff(workload.arrival_times(arrival, n, np.random.default_rng(seed)))


def test_constant_and_seeded():
  np.testing.assert_allclose(workload.arrival_times(_arrival(kind="constant", rate=4.0), 5, None),
                             [0, 0.25, 0.5, 0.75, 1.0])
  a = workload.arrival_times(_arrival(), 50, np.random.default_rng(3))
  b = workload.arrival_times(_arrival(), 50, np.random.default_rng(3))
  np.testing.assert_array_equal(a, b)
  assert a[0] == 0.0 and (np.diff(a) >= 0).all()


@pytest.mark.parametrize("b", [0.5, 1.0, 4.0])
def test_gamma_keeps_the_mean_gap_and_sets_burstiness(b):
  gaps = _gaps(_arrival(kind="gamma", burstiness=b))
  assert gaps.mean() == pytest.approx(0.1, rel=0.05)
  # Gamma with shape 1/b: squared coefficient of variation = b (b = 1: Poisson, CV 1).
  assert gaps.var() / gaps.mean() ** 2 == pytest.approx(b, rel=0.1)


def test_poisson_gaps_are_exponential():
  gaps = _gaps(_arrival())
  assert gaps.mean() == pytest.approx(0.1, rel=0.05)
  assert gaps.var() / gaps.mean() ** 2 == pytest.approx(1.0, rel=0.1)


def test_ramp_speeds_up():
  gaps = _gaps(_arrival(kind="ramp", rate=5.0, rate_end=50.0))
  inv_rates = 1 / np.linspace(5.0, 50.0, 20000)[1:]  # gap i uses the rate of request i
  assert gaps[:2000].mean() == pytest.approx(inv_rates[:2000].mean(), rel=0.05)
  assert gaps[-2000:].mean() == pytest.approx(inv_rates[-2000:].mean(), rel=0.05)
  assert gaps[:2000].mean() > 5 * gaps[-2000:].mean()


def _dist(**kw):
  return ml_collections.ConfigDict(dict(dict(kind="fixed", value=7, low=3, high=9, median=5.0,
                                             sigma=1.0, values=(2, 11)), **kw))


def test_length_distributions():
  rng = np.random.default_rng(0)
  draw = lambda d: [workload.draw_length(d, rng) for _ in range(3000)]
  assert set(draw(_dist())) == {7}
  assert set(draw(_dist(kind="uniform"))) == set(range(3, 10))
  assert set(draw(_dist(kind="list"))) == {2, 11}
  logn = np.array(draw(_dist(kind="lognormal", low=1, high=1000)))
  assert np.median(logn) == pytest.approx(5, abs=1)
  assert set(draw(_dist(kind="lognormal"))) <= set(range(3, 10))  # clipped to [low, high]


def test_generate_is_seeded_and_mixes_domains():
  wl = serve_default.get_config("size=tiny").workload
  wl.num_requests = 600
  wl.mix = ml_collections.ConfigDict({"add": 3.0, "code": 1.0})
  reqs = workload.generate(wl, workload.SyntheticPromptSource())
  again = workload.generate(wl, workload.SyntheticPromptSource())
  assert reqs == again
  share = np.mean([r.domain == "add" for r in reqs])
  assert share == pytest.approx(0.75, abs=0.05)
  assert all(r.prompt[0] == 1 and 4 <= len(r.prompt) <= 24 for r in reqs)
  assert len({r.sampling.seed for r in reqs}) == 600
  # Prompts depend on (seed, index) only: a different arrival process keeps them.
  wl.arrival.kind = "constant"
  assert [r.prompt for r in workload.generate(wl, workload.SyntheticPromptSource())] == \
      [r.prompt for r in reqs]


def test_trace_replay(tmp_path):
  path = tmp_path / "trace.jsonl"
  lines = [dict(arrival=0.5, prompt="hi", max_new_tokens=3, domain="code", priority=2, seed=9),
           dict(arrival=1.0, tokens=[1, 70, 71], max_new_tokens=2, domain="add", id=42,
                temperature=0.5)]
  path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
  a, b = workload.load_trace(path)
  assert a.prompt == (1, ord("h") + 3, ord("i") + 3) and a.priority == 2 and a.sampling.seed == 9
  assert b.id == 42 and b.prompt == (1, 70, 71) and b.sampling.temperature == 0.5


@pytest.mark.parametrize("bad, words", [
    ("{not json", "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"arrival": 1, "max_new_tokens": 2, "domain": "add"}', "prompt or tokens"),
    ('{"arrival": 1, "domain": "add", "prompt": "x"}', "max_new_tokens"),
    ('{"arrival": "soon", "max_new_tokens": 2, "domain": "add", "prompt": "x"}', "bad field"),
])
def test_bad_trace_line_names_its_number(tmp_path, bad, words):
  path = tmp_path / "t.jsonl"
  good = '{"arrival": 0, "max_new_tokens": 2, "domain": "add", "prompt": "x"}'
  path.write_text(f"{good}\n\n{bad}\n")
  with pytest.raises(workload.TraceError, match=f"t.jsonl:3: .*{words}"):
    workload.load_trace(path)
