"""Routing replay and divergence forensics on the tiny model (issue: the study that convinces).

Replay is causal: forcing a target's solo routing (serving/loop/replay.py) inside busy traffic gives
its solo tokens and log-probs bitwise under every capacity scope, batch scope at capacity factor
1.0 included, where the same traffic without replay changes completions.

Forensics names the cause: at capacity 1 per expert, a co-request forced onto both of the
target's experts from one decode step on takes their only slots; the record of the repeat names
that co-request, the first layer, that position and step, and `dropped`.
"""
import dataclasses

import numpy as np
import pytest

from configs import study_default
from moe_serve import loading
from moe_serve.experiments import determinism, prompts, setting_runner, settings, traffic
from moe_serve.metrics import forensics
from moe_serve.serving.loop import replay as replay_lib
from moe_serve.experiments.probes import trace as trace_lib
from moe_serve.serving.stream.request import Request


@pytest.fixture(scope="module")
def setup():
  cfg = study_default.get_config("size=tiny")
  return cfg, loading.load(cfg, log=lambda *_: None)[0], prompts.EvalPromptSource()


@pytest.mark.parametrize("scope", ["batch", "sequence", "none"])
def test_replaying_solo_routing_in_traffic_gives_solo_tokens_bitwise(setup, scope):
  cfg, params, source = setup
  cfg = cfg.copy_and_resolve_references()
  cfg.model.router.capacity_scope = scope
  cfg.study.replay = "solo"
  cfg = settings.study_config(cfg)  # capacity factor 1.0
  engine = setting_runner.make_engine(cfg, params)
  targets = [dataclasses.replace(t, ignore_eos=True) for t in prompts.target_requests(
      cfg.study.target_domains, 1, cfg.study.max_new_tokens, traffic.TARGET_ID0, source.tok)]
  ids = [t.id for t in targets]
  solo = {}
  for t in targets:
    tracer = trace_lib.Tracer([t.id])
    solo.update(determinism.traces(tracer, engine.run([t], tracer=tracer), [t.id]))
  busy = traffic.repeat_requests(cfg, targets, source, 0)  # the targets in traffic

  def repeat(replay):
    tracer = trace_lib.Tracer(ids)
    return determinism.traces(tracer, engine.run(busy, tracer=tracer, stop_after=ids,
                                                 replay=replay), ids)

  replayed = repeat({i: solo[i].codes for i in ids})
  for i in ids:
    assert replayed[i].tokens == solo[i].tokens and replayed[i].logprobs == solo[i].logprobs
    np.testing.assert_array_equal(replayed[i].codes, solo[i].codes)
  if scope == "batch":  # the same traffic and engine without replay: what the replay removes
    free = repeat(None)
    assert any(free[i].logprobs != solo[i].logprobs for i in ids)
    assert any((free[i].codes != solo[i].codes).any() for i in ids)


def test_replay_codes_round_trip_a_file(tmp_path):
  codes = {"solo_7": np.array([[[1, -3]], [[2, 4]]]), "r0_7": np.array([[[-1, 2]]])}
  path = str(tmp_path / "routing.npz")
  replay_lib.save(path, codes)
  back = replay_lib.load(path)
  assert sorted(back) == sorted(codes)
  for k, v in codes.items():
    np.testing.assert_array_equal(back[k], v)
  from moe_serve.model import routing  # pylint: disable=import-outside-toplevel
  expert, kept = routing.decode_forced(codes["solo_7"])
  np.testing.assert_array_equal(routing.encode_forced(expert, kept), codes["solo_7"])


def test_forensics_names_the_co_request_that_took_the_slots(setup):
  cfg, params, source = setup
  cfg = cfg.copy_and_resolve_references()
  cfg.model.router.capacity_scope = "batch"
  # 4 experts, k=2, 24 step tokens: factor 1/12 gives every expert one slot per step.
  cfg.study.update(capacity_factor=0.083, replay="solo")
  cfg = settings.study_config(cfg)
  engine = setting_runner.make_engine(cfg, params)
  target = Request(id=5, prompt=[1, 40, 41, 42, 43, 44], max_new_tokens=12, domain="prose",
                   ignore_eos=True)
  co = Request(id=9, prompt=[1, 50, 51, 52], max_new_tokens=12, domain="code", ignore_eos=True)

  def traced(requests, replay):
    tracer = trace_lib.Tracer([target.id], co_routing=True)
    log = engine.run(requests, tracer=tracer, replay=replay)
    return tracer, log, determinism.traces(tracer, log, [target.id])[target.id]

  _, _, solo = traced([target], None)
  # Both arrive at 0 and prefill in step 0; decode step s feeds position prompt_len + s - 1.
  # The co-request's pairs are all forced dropped (it takes no slot) except at one step and
  # layer, where it is forced onto the target's two (kept) experts.
  # The co-request's pairs are all forced dropped (it takes no slot), except from decode step
  # `step` on, where it is forced onto the target's two solo experts in every layer.
  step = 2
  u = len(target.prompt) + step - 1
  assert (solo.codes[u] > 0).all()  # alone, the target kept both choices in every layer
  co_codes = -np.ones((len(co.prompt) + co.max_new_tokens, 2, 2), np.int32)
  for s in range(step, co.max_new_tokens):
    co_codes[len(co.prompt) + s - 1] = solo.codes[len(target.prompt) + s - 1]
  tracer, log, run = traced([target, co], {co.id: co_codes})
  reqs = {r["id"]: r for r in log.requests}
  rec = forensics.diagnose(solo, run, target.id, tracer.steps, tracer.step_of[target.id], reqs)
  assert rec is not None, "the forced collision changed nothing"
  assert (rec["routing_position"], rec["layer"], rec["step"]) == (u, 0, step)
  assert rec["cause"] == "dropped" and rec["expert"] in (np.abs(solo.codes[u, 0]) - 1)
  assert [(h["id"], h["domain"], h["pairs"]) for h in rec["holders"]] == [(co.id, "code", 1)]
  # Output `step` is the first computed through position u (the tiny random model's greedy
  # tokens may not change: then only log-probs differ and first_divergence is None).
  assert rec["first_logprob_divergence"] == step
  assert rec["first_divergence"] is None or rec["first_divergence"] >= step
  agg = forensics.aggregate([rec])
  assert agg["cause"] == {"dropped": 1} and agg["holder_domains"] == {"code": 1}
