"""Scheduler/engine properties over random workloads and settings (hypothesis, fake model).

Checked for every example: every admitted request finishes exactly once with the completion a
lone greedy decode gives (so output lengths are max_new_tokens or end at EOS, preempted requests
resumed correctly, and no state leaked between requests sharing a slot); the KV block budget is
never exceeded, no slot is held by two requests and no step exceeds the token budget or admits
while it preempts.
"""
import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.serving.clock import running as clock_lib
from moe_serve.serving.loop.engine import Engine
from moe_serve.serving.stream.request import Request, SamplingParams
from tests.serving import fakes

VOCAB = 48


def _cfg(policy, batching, slots, blocks, block_size, buckets, budget_extra, ignore_eos):
  cfg = serve_default.get_config("size=tiny")
  cfg.model.vocab_size = VOCAB
  decode_rows, prefill_rows, chunk_lens = buckets
  cfg.serve.update(policy=policy, batching=batching, max_num_seqs=slots, kv_num_blocks=blocks,
                   kv_block_size=block_size, ignore_eos=ignore_eos,
                   max_num_batched_tokens=slots + max(chunk_lens) + budget_extra)
  cfg.serve.buckets.update(decode_rows=tuple(sorted({*decode_rows, slots})),
                           prefill_rows=prefill_rows, chunk_lens=chunk_lens)
  config_lib.validate(cfg)
  config_lib.validate_serve(cfg)
  return cfg


def _requests(draw_lens, arrivals, priorities, seed):
  rng = np.random.default_rng(seed)
  out = []
  for i, ((p, n), t, pr) in enumerate(zip(draw_lens, arrivals, priorities)):
    prompt = [1] + rng.integers(3, VOCAB, p - 1).tolist()
    out.append(Request(id=i, prompt=prompt, max_new_tokens=n, arrival=t, domain="add",
                       priority=pr, sampling=SamplingParams(seed=i)))
  return out


def serve_with_fake(cfg, requests):
  """Runs the engine on the fake model, checking invariants after every step."""
  model = fakes.FakeModel(cfg.serve.max_num_seqs, cfg.model.max_len, VOCAB)
  engine = Engine(cfg, model, None, model.init_cache(), clock_lib.Clock(cfg.clock))

  def on_step(eng, rec):
    eng.sched.check_invariants()  # includes: no slot held by two running requests
    assert rec["kv_blocks_used"] <= cfg.serve.kv_num_blocks
    assert rec["decode"] + rec["prefill_tokens"] <= cfg.serve.max_num_batched_tokens
    assert not (rec["preempted"] and rec["admitted"]), "admitted in a step that preempted"
    holders = {}
    for seq in eng.sched.running:
      assert 0 <= seq.slot < cfg.serve.max_num_seqs
      assert holders.setdefault(seq.slot, seq.req.id) == seq.req.id

  return engine.run(requests, on_step=on_step)


def check_log(cfg, requests, log):
  recs = {r["id"]: r for r in log.requests}
  assert len(log.requests) == len(requests) == len(recs), "a request is missing or repeated"
  finished_in_steps = [i for s in log.steps for i in s["finished"]]
  assert sorted(finished_in_steps) == sorted(recs), "each request finishes exactly once"
  for req in requests:
    rec = recs[req.id]
    assert rec["status"] == "finished"
    want = fakes.expected_completion(req.prompt, req.max_new_tokens, VOCAB,
                                     eos=not cfg.serve.ignore_eos)
    assert rec["tokens"] == want, (req.id, rec["preemptions"])
    assert rec["output_len"] == len(want) and len(rec["token_times"]) == len(want)
    assert rec["finish_reason"] == ("eos" if want[-1] == 2 and not cfg.serve.ignore_eos
                                    else "length")
    assert rec["arrival"] <= rec["admitted"] < rec["first_token"] <= rec["finish"]
    assert all(np.diff(rec["token_times"]) > 0)


_BUCKETS = st.sampled_from([((4,), (0, 1), (4,)), ((2, 4), (2,), (2, 4)), ((4,), (1, 3), (3,))])


@hypothesis.settings(max_examples=20, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(
    policy=st.sampled_from(["fcfs", "priority", "sjf"]),
    batching=st.sampled_from(["continuous", "continuous", "static"]),
    slots=st.integers(1, 4),
    block_size=st.sampled_from([2, 4, 16]),
    spare_blocks=st.integers(0, 12),
    buckets=_BUCKETS,
    budget_extra=st.integers(0, 6),
    ignore_eos=st.booleans(),
    lens=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 12)), min_size=1, max_size=10),
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.05]), min_size=10, max_size=10),
    seed=st.integers(0, 3),
)
def test_random_workloads_finish_correctly(policy, batching, slots, block_size, spare_blocks,
                                           buckets, budget_extra, ignore_eos, lens, gaps, seed):
  longest = max(p + n for p, n in lens)
  blocks = -(-longest // block_size) + spare_blocks  # the longest request always fits alone
  cfg = _cfg(policy, batching, slots, blocks, block_size, buckets, budget_extra, ignore_eos)
  arrivals = np.cumsum(gaps[:len(lens)]).tolist()
  requests = _requests(lens, arrivals, [i % 3 for i in range(len(lens))], seed)
  check_log(cfg, requests, serve_with_fake(cfg, requests))


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_tight_kv_budget_preempts_and_resumes(batching):
  cfg = _cfg("fcfs", batching, 4, 6, 4, ((4,), (0, 2), (4,)), 0, ignore_eos=True)
  lens = [(6, 12), (5, 12), (7, 10), (4, 12), (3, 9)]
  requests = _requests(lens, [0.0] * 5, [0] * 5, 0)
  log = serve_with_fake(cfg, requests)
  check_log(cfg, requests, log)
  assert sum(r["preemptions"] for r in log.requests) > 0, "the budget was meant to force it"
  assert any(s["preempted"] for s in log.steps)


def test_an_engine_runs_twice_the_same():
  cfg = _cfg("sjf", "continuous", 3, 8, 4, ((4,), (0, 2), (4,)), 0, ignore_eos=False)
  requests = _requests([(5, 9), (9, 4), (3, 12), (7, 7)], [0.0, 0.0, 0.01, 0.02], [0] * 4, 3)
  model = fakes.FakeModel(3, cfg.model.max_len, VOCAB)
  engine = Engine(cfg, model, None, model.init_cache(), clock_lib.Clock(cfg.clock))
  first, second = engine.run(requests), engine.run(requests)
  check_log(cfg, requests, first)
  assert first.requests == second.requests and first.steps == second.steps


def test_static_batching_admits_only_when_idle():
  cfg = _cfg("fcfs", "static", 2, 64, 16, ((2,), (0, 2), (4,)), 0, ignore_eos=True)
  requests = _requests([(4, 5)] * 5, [0.0, 0.0, 0.0, 0.0, 0.0], [0] * 5, 1)
  log = serve_with_fake(cfg, requests)
  check_log(cfg, requests, log)
  admitted = [(s["step"], s["admitted"]) for s in log.steps if s["admitted"]]
  assert [a for _, a in admitted] == [[0, 1], [2, 3], [4]]
  for step, _ in admitted[1:]:
    assert log.steps[step - 1]["finished"], "a new batch starts only after the last one ended"


def test_priority_policy_serves_smaller_priority_first():
  cfg = _cfg("priority", "continuous", 1, 64, 16, ((1,), (0, 1), (4,)), 0, ignore_eos=True)
  requests = _requests([(3, 2)] * 4, [0.0] * 4, [3, 1, 2, 0], 2)
  log = serve_with_fake(cfg, requests)
  order = [a for s in log.steps for a in s["admitted"]]
  assert order == [3, 1, 2, 0]
