"""The engine on the tiny real model: slot reuse, reproducible logs, no compiles after warm-up.

Fixed step shapes (one bucket) and dropless routing (the tiny config's capacity_scope='none'),
so a request's logits do not depend on what else runs (docs/design.md section 4, contract 2;
the dense `einsum` reference is within 1 ulp of it on some CPUs, see below).
"""
import jax
import numpy as np
import pytest

from moe_serve.model import dispatch_sorted
from moe_serve.parallel import compiles, steps
from moe_serve.serving import run as run_lib
from moe_serve.serving.stream.request import Request, SamplingParams
from moe_serve.serving.loop.scheduler import Plan
from moe_serve.serving.loop.sequence import Seq
from tests.helpers.serving import engine, tiny_serve_cfg

FIXED = dict(decode_rows=(8,), prefill_rows=(2,), chunk_lens=(8,))


def _req(rid, n_prompt, n_new, arrival, seed=0, temperature=0.0):
  rng = np.random.default_rng(rid + 100 * seed)
  prompt = [1] + rng.integers(3, 259, n_prompt - 1).tolist()
  return Request(id=rid, prompt=prompt, max_new_tokens=n_new, arrival=arrival, domain="code",
                 sampling=SamplingParams(temperature=temperature, top_k=20, top_p=0.9, seed=rid))


def _by_id(log):
  return {r["id"]: r for r in log.requests}


def _fixed_cfg(**serve):
  cfg = tiny_serve_cfg(ignore_eos=True, **serve)
  cfg.serve.buckets.update(FIXED)
  return cfg


def test_reused_slot_leaks_nothing(tiny_model):
  cfg = _fixed_cfg(max_num_seqs=1)
  target = _req(9, 11, 10, arrival=100.0, temperature=0.8)
  # Earlier occupants of slot 0, longer than the target, leave stale keys/values past its end.
  before = [_req(1, 30, 20, 0.0), _req(2, 17, 25, 50.0)]
  solo = _by_id(engine(cfg, tiny_model).run([target]))[9]
  log = engine(cfg, tiny_model).run(before + [target])
  reused = _by_id(log)[9]
  assert [s["requests"] for s in log.steps if 9 in s["requests"]][0] == [9]  # alone in its steps
  assert reused["tokens"] == solo["tokens"]
  assert reused["logprobs"] == solo["logprobs"]  # bitwise: same shapes, same slot, same rows


# Dropless `einsum` is the dense reference: every expert on the whole flat token axis [T, D]. On
# XLA:CPU a row's result of that dot can depend on the row's position in T (measured on
# 2026-11-27 on a 2-core AMD EPYC with AVX2: request 2's logprobs differ by 2.4e-7, 1 ulp, between
# its solo and co-batched rows; bitwise on the host of 2026-11-26). `gather`, which the study
# uses, and `sorted` (the dropless default) are bitwise on both; so are the tokens under any.
# With the mode off nothing more is claimed: kv-length buckets change a request's bits on some
# hosts (Intel AVX-512, 2026-12-04; AMD EPYC with AVX-512, 2026-12-05), and so do step shapes.
@pytest.mark.parametrize("dispatch, logprob_atol", [("gather", 0.0), ("einsum", 1e-6)])
def test_co_batched_requests_match_solo_with_fixed_shapes(dispatch, logprob_atol):
  cfg = _fixed_cfg()
  cfg.model.router.dispatch = dispatch
  model = (steps.make_step_fn(cfg.model), steps.make_init_fn(cfg.model)(0))
  reqs = [_req(i, 5 + 3 * i, 12, 0.002 * i, temperature=0.7 * (i % 2)) for i in range(6)]
  log = engine(cfg, model).run(reqs)
  assert max(s["decode"] + s["prefill_rows"] for s in log.steps) >= 4  # they did share steps
  busy = _by_id(log)
  for req in reqs[:3]:
    solo = _by_id(engine(cfg, model).run([req]))[req.id]
    assert busy[req.id]["tokens"] == solo["tokens"], req.id
    np.testing.assert_allclose(busy[req.id]["logprobs"], solo["logprobs"], rtol=0,
                               atol=logprob_atol)


# model.batch_invariant: the contract at any step shape. Buckets of every kind vary with the load
# (decode rows, prefill rows, chunk lengths, kv lengths), requests share steps, take other slots,
# and the busy run preempts (a recompute prefills generated tokens again); a request's tokens
# and log-probs are its solo run's, bitwise. Dropless here; `sequence` scope at the step level in
# tests/model/test_invariant.py (a recompute regroups its tokens, so its capacities change).
def test_batch_invariant_requests_match_solo_at_any_step_shape():
  cfg = tiny_serve_cfg(ignore_eos=True, max_num_seqs=6, kv_num_blocks=8)
  # Rows, prefill rows and kv lengths vary (one chunk length: tests/model/test_invariant.py
  # varies it, and each value doubles the compiles here).
  cfg.serve.buckets.update(decode_rows=(2, 6), prefill_rows=(0, 3), chunk_lens=(8,),
                           kv_lens=(32,))
  cfg.model.batch_invariant = True
  cfg.model.update(num_layers=1, moe_every=1)  # one attention + MoE layer: half the compile time
  cfg.model.router.update(capacity_scope="none", dispatch="gather")
  model = (steps.make_step_fn(cfg.model), steps.make_init_fn(cfg.model)(0))
  rng = np.random.default_rng(7)
  reqs = [_req(i, int(rng.integers(3, 30)), int(rng.integers(4, 30)), 0.003 * i,
               temperature=0.7 * (i % 2)) for i in range(10)]
  log = engine(cfg, model).run(reqs)
  shapes = {tuple(s["bucket"]) + (s["kv_len"],) for s in log.steps}
  assert len({b for b, *_ in shapes}) == 2 and len({p for _, p, *_ in shapes}) == 2
  assert len({kv for *_, kv in shapes}) == 2
  busy = _by_id(log)
  preempted = [r.id for r in reqs if busy[r.id]["preemptions"]]
  assert preempted  # recomputed prefixes too
  for req in reqs:
    if req.id in preempted or req.id < 3:
      solo = _by_id(engine(cfg, model).run([req]))[req.id]
      assert busy[req.id]["tokens"] == solo["tokens"], req.id
      assert busy[req.id]["logprobs"] == solo["logprobs"], req.id  # bitwise


def test_static_and_continuous_give_the_same_completions(tiny_model):
  reqs = [_req(i, 4 + 2 * i, 6 + i, 0.003 * i) for i in range(10)]
  out = {}
  for batching in ("continuous", "static"):
    log = engine(_fixed_cfg(batching=batching), tiny_model).run(reqs)
    out[batching] = {r["id"]: r["tokens"] for r in log.requests}
    assert all(len(out[batching][r.id]) == r.max_new_tokens for r in reqs)
  assert out["continuous"] == out["static"]


def test_eos_ends_a_request(tiny_model):
  cfg = tiny_serve_cfg()
  probe = engine(_fixed_cfg(), tiny_model).run([_req(0, 6, 8, 0.0)])
  first = probe.requests[0]["tokens"][2]  # make the third greedy token the EOS id
  cfg.serve.update(eos_id=int(first), ignore_eos=False)
  cfg.serve.buckets.update(FIXED)
  rec = engine(cfg, tiny_model).run([_req(0, 6, 8, 0.0)]).requests[0]
  cut = rec["tokens"].index(first) + 1
  assert rec["finish_reason"] == "eos" and rec["output_len"] == cut <= 3


def test_cost_model_logs_are_byte_identical_and_nothing_compiles_after_warmup(tiny_model, tmp_path):
  cfg = tiny_serve_cfg()
  cfg.workload.update(num_requests=24, num_priorities=3)
  cfg.workload.arrival.rate = 200.0
  cfg.serve.buckets.update(decode_rows=(4, 8), prefill_rows=(0, 2))  # 4 step shapes
  files = {}
  for name in ("a", "b"):
    summary, _ = run_lib.serve(cfg, tmp_path / name, engine=engine(cfg, tiny_model, num_slots=8),
                               log=lambda *_: None)
    assert summary["compiles_after_warmup"] == 0
    assert summary["completed"] == 24 and summary["steps"] > 24
    files[name] = [(tmp_path / name / f).read_bytes() for f in ("steps.jsonl", "requests.jsonl")]
  assert files["a"] == files["b"]
  with compiles.count_compiles() as n:  # and a third engine, already warm, compiles nothing
    engine(cfg, tiny_model, num_slots=8).run(run_lib.make_requests(cfg))
  assert n() == 0


def test_routing_records_attribute_drops_to_requests(tmp_path):
  cfg = tiny_serve_cfg(record_routing=True)
  cfg.serve.buckets.update(FIXED)  # one step shape: one compile of this routing-recording step
  cfg.model.router.update(capacity_scope="batch", capacity_factor_prefill=0.5,
                          capacity_factor_decode=0.5)
  cfg.workload.update(num_requests=6)
  cfg.workload.arrival.rate = 500.0
  engine = run_lib.build_engine(cfg)
  _, log = run_lib.serve(cfg, tmp_path, engine=engine, log=lambda *_: None)
  done = [r for r in log.requests if r["status"] == "finished"]
  per_layer_req = np.sum([r["drops"] for r in done], axis=0)
  per_layer_steps = np.sum([s["drops"] for s in log.steps], axis=0)
  assert len(per_layer_steps) == cfg.model.num_layers  # every tiny layer is MoE
  np.testing.assert_array_equal(per_layer_req, per_layer_steps)
  assert per_layer_steps.sum() > 0  # capacity factor 0.5 must drop something
  # The step's own count of kept pairs (what the cost_model clock prices, step_cost.py) agrees
  # with the recorded routing: k pairs per real token per MoE layer, minus the drops. `sorted`
  # runs each expert's kept pairs in whole blocks: at most one part-filled block per expert.
  m = cfg.model
  for s in log.steps:
    real = s["decode"] + s["prefill_tokens"]
    c = s["cost"]
    assert c["kept_pairs"] == m.num_layers * m.router.k * real - sum(s["drops"]), s["step"]
    assert c["kept_pairs"] <= c["expert_rows"] < c["kept_pairs"] + m.num_layers * (
        m.num_experts * dispatch_sorted.BLOCK_ROWS)
    assert c["expert_rows"] % dispatch_sorted.BLOCK_ROWS == 0
  assert m.router.dispatch == "sorted" and len({s["cost"]["expert_rows"] for s in log.steps}) > 1


def test_prompt_logprobs_match_a_full_forward(tiny_model):
  step_fn, params = tiny_model
  cfg = _fixed_cfg(prompt_logprobs=True, kv_num_blocks=5)  # tight: forces a recompute
  reqs = [_req(i, 13 + 4 * i, 12, 0.0) for i in range(4)]
  log = engine(cfg, tiny_model).run(reqs)
  assert sum(r["preemptions"] for r in log.requests) > 0
  longest = max(len(r.prompt) for r in reqs)
  padded = np.asarray([list(r.prompt) + [0] * (longest - len(r.prompt)) for r in reqs])
  lp_BxLxV = np.asarray(jax.nn.log_softmax(steps.make_forward_fn(cfg.model)(params, padded)[0], -1))
  for req, rec, lp in zip(reqs, log.requests, lp_BxLxV):  # causal: right padding changes nothing
    want = lp[np.arange(len(req.prompt) - 1), np.asarray(req.prompt[1:])]
    assert len(rec["prompt_logprobs"]) == len(req.prompt) - 1
    # Cached chunked attention sums in another order than the full forward (test_decoder.py).
    np.testing.assert_allclose(rec["prompt_logprobs"], want, atol=1e-5, rtol=0)


def test_recompute_preemption_resamples_the_same_tokens_at_temperature(tiny_model):
  """A preempted request prefills prompt + outputs again and samples its next token from the
  chunk's logits, where an unpreempted one uses a decode row: both key the draw on the token's
  position, so the tokens agree (logprobs may differ in the last bits: other summation order)."""
  reqs = [_req(i, 13 + 4 * i, 12, 0.0, temperature=0.9) for i in range(4)]
  roomy = engine(_fixed_cfg(), tiny_model).run(reqs)
  tight = engine(_fixed_cfg(kv_num_blocks=5), tiny_model).run(reqs)  # as in the test above
  assert sum(r["preemptions"] for r in roomy.requests) == 0
  preempted = [r["id"] for r in tight.requests if r["preemptions"]]
  assert preempted
  roomy_tokens = {r["id"]: r["tokens"] for r in roomy.requests}
  assert {r["id"]: r["tokens"] for r in tight.requests} == roomy_tokens
  assert all(len(set(roomy_tokens[i])) > 3 for i in preempted)  # really sampled, not one token

def test_a_plan_with_a_request_in_two_rows_is_refused(tiny_model):
  """The step sizes `sequence`-scope expert buffers by one request per row; the engine checks
  every batch it builds, so a scheduler bug cannot silently overflow them."""
  eng = engine(_fixed_cfg(), tiny_model)
  req = _req(3, 6, 4, arrival=0.0)
  seq = Seq(req=req, key=(0, 3), tokens=list(req.prompt), num_computed=2, slot=0)
  build = eng._build  # pylint: disable=protected-access
  assert build(Plan(decode=[], prefill=[(seq, 4)], admitted=[], preempted=[]))[0] == (8, 2, 8)
  with pytest.raises(ValueError, match=r"requests \[3\] have more than one row"):
    build(Plan(decode=[seq], prefill=[(seq, 4)], admitted=[], preempted=[]))
