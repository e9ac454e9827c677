"""The repeat-in-traffic experiment on the tiny model (random init; docs/design.md contracts 2, 3).

Contract 2: with capacity scope `none` or `sequence` and fixed step shapes, every repeat of every
target, injected into different random traffic (so different co-requests, slots and step
positions) at two loads, gives bitwise the tokens and logprobs of its solo reference.
Contract 3 (the effect is real): the same traffic with scope `batch` at capacity factor 1.0
changes some completion, and makes routing decisions differ.
"""
import os

import pytest

from configs import study_default
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.experiments import determinism, prompts, setting_runner, settings, traffic
from moe_serve.parallel import compiles
from moe_serve.serving.stream import prompt_sources


@pytest.fixture(scope="module")
def setup():
  cfg = study_default.get_config("size=tiny")
  return cfg, loading.load(cfg, log=lambda *_: None)[0], prompts.EvalPromptSource()


def _run(cfg, params, source, scope, loads_seeds, repeats=3):
  cfg = cfg.copy_and_resolve_references()
  cfg.model.router.capacity_scope = scope
  cfg.study.repeats = repeats
  cfg = settings.study_config(cfg)
  engine = setting_runner.make_engine(cfg, params)
  out = []
  with compiles.count_compiles() as n:  # one fixed step shape, compiled by the warm-up
    for load, seed in loads_seeds:
      cfg.study.update(load=load, seed=seed)
      cfg.workload.arrival.rate = load
      out.append(determinism.repeat_in_traffic(cfg, engine, source))
    assert n() == 0
  return out


@pytest.mark.parametrize("scope", ["none", "sequence"])
def test_batch_invariant_scopes_match_solo_bitwise(setup, scope):
  cfg, params, source = setup
  for per_target, agg in _run(cfg, params, source, scope, [(20.0, 0), (80.0, 1)]):
    assert agg["bitwise_with_solo"] == 1.0, per_target
    assert agg["routing_diff_fraction"] == 0.0
    for t in per_target.values():
      assert t["unique_completions"] == 1 and t["max_kl"] == 0.0


def test_batch_scope_at_capacity_one_changes_completions(setup):
  cfg, params, source = setup
  ((per_target, agg),) = _run(cfg, params, source, "batch", [(40.0, 0)], repeats=4)
  assert agg["traffic_drop_rate"] > 0
  assert agg["routing_diff_fraction"] > 0
  assert max(t["unique_completions"] for t in per_target.values()) > 1, per_target


def test_prefix_mode_reuses_busy_blocks_and_stays_solo_with_the_mode_on(setup):
  """Contract 7 in the study: targets reuse prompt blocks computed in their co-requests' busy
  steps (cached_tokens > 0 in every repeat) and, with model.batch_invariant and scope none, every
  repeat is bitwise its cold solo run."""
  cfg, params, source = setup
  cfg = cfg.copy_and_resolve_references()
  cfg.study.update(mode="prefix", repeats=2, co_requests=3)
  # Blocks of 4: the tiny targets' prompts are short (the default 16 would cache few).
  cfg.serve.update(prefix_cache=True, prompt_logprobs=False, kv_block_size=4,
                   kv_num_blocks=cfg.serve.max_num_seqs * cfg.model.max_len // 4)
  cfg.model.batch_invariant = True
  cfg.model.router.capacity_scope = "none"
  cfg = settings.study_config(config_lib.validate_study(cfg))
  engine = setting_runner.make_engine(cfg, params)
  targets = prompts.target_requests(cfg.study.target_domains, 1, 4, traffic.TARGET_ID0,
                                    source.tok)
  log = engine.run(traffic.repeat_requests(cfg, targets, source, 0))
  recs = {r["id"]: r for r in log.requests}
  for t in targets:
    assert recs[t.id]["cached_tokens"] > 0 and recs[t.id]["cached_from"], recs[t.id]
    assert set(recs[t.id]["cached_from"]) - {t.id}  # computed in co-requests' steps
  per_target, agg = determinism.repeat_in_traffic(cfg, engine, source)
  assert agg["bitwise_with_solo"] == 1.0, per_target


def test_study_background_is_the_trace_when_one_is_given():
  """workload.trace replaces the generated background traffic (the same in every repeat)."""
  cfg = study_default.get_config("size=tiny")
  trace = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "traces",
                       "burstgpt.csv")
  cfg.workload.update(trace=trace, trace_format="burstgpt")
  source = prompt_sources.make(cfg.workload.prompt_source)
  for seed in (1, 2):
    assert [len(r.prompt) for r in traffic.background(cfg, source, seed)] == [12, 20, 30, 5]
  cfg.workload.update(trace="", trace_format="jsonl")
  one, two = (traffic.background(cfg, source, seed) for seed in (1, 2))
  assert len(one) == cfg.workload.num_requests and [r.prompt for r in one] != [r.prompt for r in two]
