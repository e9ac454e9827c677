"""Prefix caching (serve.prefix_cache): the books by hand, the engine on the fake model under KV
pressure, and the device copies. The determinism contract with a cache (bitwise the cold solo run
with model.batch_invariant): tests/experiments/test_protocols.py (cache warm across runs) and
test_determinism.py (study.mode=prefix)."""
import jax
import ml_collections
import numpy as np
import pytest

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.model import api, attend
from moe_serve.parallel import mesh as mesh_lib
from moe_serve.parallel import sharding
from moe_serve.serving import clock as clock_lib
from moe_serve.serving import prefix_cache as prefix_lib
from moe_serve.serving import prefix_pool
from moe_serve.serving.engine import Engine
from moe_serve.serving.request import Request, SamplingParams
from moe_serve.serving.scheduler import Scheduler
from tests.serving import fakes

VOCAB = 48
BS = 4  # block size of the hand-worked tests


def _serve_cfg(**kw):
  s = dict(policy="fcfs", batching="continuous", max_num_seqs=2, max_num_batched_tokens=64,
           kv_block_size=BS, kv_num_blocks=8, prefix_cache=True)
  s.update(kw)
  return ml_collections.ConfigDict(s)


def _req(rid, prompt, max_new=2, arrival=0.0):
  return Request(id=rid, prompt=list(prompt), max_new_tokens=max_new, arrival=arrival,
                 domain="add", sampling=SamplingParams(seed=rid))


def _step(sched, plan, token=7):
  fakes.apply_plan(sched, plan, token)


def _run(sched, now=0.0):
  plans = []
  while sched.has_work():
    plans.append(sched.schedule(now))
    _step(sched, plans[-1])
  return plans


A = list(range(10, 20))  # 10 tokens: blocks [10..13], [14..17] full, [18, 19] partial


def test_blocks_by_hand_hit_copy_and_dedupe():
  sched = Scheduler(_serve_cfg(), max_prefill_rows=2, chunk_size=8)
  sched.add(_req(0, A, max_new=1))
  plans = _run(sched)
  # A: prefill 8 (blocks 0, 1 complete: saved to pool places 0, 1), then 2 more; 1 token.
  assert [[n for _, n in p.prefill] for p in plans] == [[8], [2]]
  assert sched.take_saves() == [(0, 0, 0), (0, 1, 1)]
  assert len(sched.cache) == 2 and sched.blocks_used == 2  # only cached blocks stay held
  # B shares A's two full blocks: it copies them into its slot and prefills the rest (3).
  b = sched.add(_req(1, A[:8] + [90, 91, 92], max_new=1))
  plan = sched.schedule(1.0)
  assert plan.loads == [(0, 0, 0), (0, 1, 1)]
  assert b.num_computed == 8 and b.cached_tokens == 8 and plan.prefill == [(b, 3)]
  assert b.cached_from == [0, 0]  # both blocks computed in A's steps
  _step(sched, plan)
  assert sched.take_saves() == []  # B completed no new full block
  # C is A's first 8 tokens exactly: its last token must run, so only block 0 is reused; the
  # block 1 it recomputes is already cached: no copy, and its own block is given back.
  c = sched.add(_req(2, A[:8], max_new=1))
  plan = sched.schedule(2.0)
  assert plan.loads == [(0, 0, 0)] and plan.prefill == [(c, 4)]
  assert sched.blocks_used == 3  # the two cached blocks and C's own
  _step(sched, plan)
  assert sched.take_saves() == [] and c.finish_reason == "length"
  assert sched.blocks_used == len(sched.cache) == 2 and sched.free_blocks == 6
  assert all(e.refs == 0 for e in sched.cache.entries.values())
  assert [e.owner for e in sched.cache.entries.values()] == [0, 0]  # A computed both


def test_the_least_recently_released_block_is_evicted_first_and_held_ones_never():
  sched = Scheduler(_serve_cfg(max_num_seqs=2, kv_num_blocks=4), max_prefill_rows=1,
                    chunk_size=8)
  x, y = list(range(10, 18)), list(range(30, 38))
  keys = lambda tokens: prefix_lib.chain(tokens, BS, [])
  for rid, tokens in enumerate((x, y)):  # two blocks each: the budget is full of cached blocks
    sched.add(_req(rid, tokens, max_new=1))
    _run(sched)
  assert set(sched.cache.entries) == set(keys(x) + keys(y)) and sched.free_blocks == 0
  sched.add(_req(2, list(range(50, 56)), max_new=1))  # needs 2: x's two go (released first)
  _run(sched)
  assert set(sched.cache.entries) == set(keys(y) + keys(list(range(50, 54))))
  y_hit = sched.add(_req(3, y + [1], max_new=3))
  plan = sched.schedule(1.0)
  assert len(plan.loads) == 2 and y_hit.cached_tokens == 8
  _step(sched, plan)
  # y_hit holds y's blocks and one of its own; w needs 2: the unreferenced block goes, y's
  # stay, and w waits until y_hit finishes.
  w = sched.add(_req(4, list(range(70, 78)), max_new=1))
  while y_hit.finish_reason is None:
    plan = sched.schedule(2.0)
    assert w not in plan.admitted and set(keys(y)) <= set(sched.cache.entries)
    _step(sched, plan)
  assert len(sched.cache) == 2  # y's: the others were evicted for room
  _run(sched)
  assert w.finish_reason == "length" and w.cached_tokens == 0


@pytest.mark.parametrize("policy, first", [("fcfs", 1), ("lpm", 2)])
def test_lpm_admits_the_longest_cached_prefix_first(policy, first):
  sched = Scheduler(_serve_cfg(policy=policy, max_num_seqs=1), max_prefill_rows=1,
                    chunk_size=8)
  sched.add(_req(0, A, max_new=1))
  _run(sched)
  sched.add(_req(1, list(range(60, 70)), arrival=1.0))  # nothing cached
  sched.add(_req(2, A[:8] + [5, 6], arrival=2.0))  # two cached blocks
  plan = sched.schedule(3.0)
  assert [s.req.id for s in plan.admitted] == [first]


# ------------------------------------------------------------------ the engine, fake model
def _fake_cfg(policy, slots, blocks):
  cfg = serve_default.get_config("size=tiny")
  cfg.model.vocab_size = VOCAB
  cfg.serve.update(policy=policy, max_num_seqs=slots, kv_num_blocks=blocks, kv_block_size=BS,
                   ignore_eos=True, prefix_cache=True, max_num_batched_tokens=slots + 8)
  cfg.serve.buckets.update(decode_rows=(slots,), prefill_rows=(0, 2), chunk_lens=(4, 8))
  config_lib.validate(cfg)
  config_lib.validate_serve(cfg)
  return cfg


def _shared_prefix_requests(n, seed):
  """Requests whose prompts start with one of three shared prefixes (0-13 tokens)."""
  rng = np.random.default_rng(seed)
  heads = [[1] + rng.integers(3, VOCAB, k).tolist() for k in (3, 9, 13)]
  out = []
  for i in range(n):
    prompt = heads[i % 3][:int(rng.integers(1, 15))] + rng.integers(3, VOCAB, int(
        rng.integers(1, 6))).tolist()
    out.append(_req(i, prompt, max_new=int(rng.integers(1, 12)), arrival=0.004 * (i // 2)))
  return out


@pytest.mark.parametrize("policy, slots, blocks, seed", [
    ("fcfs", 3, 9, 0), ("lpm", 3, 9, 1), ("fcfs", 2, 7, 2), ("lpm", 4, 12, 3)])
def test_engine_on_the_fake_model_under_kv_pressure(policy, slots, blocks, seed):
  """Every completion is the fake's (which reads the tokens back from the slot: a block copied
  to the wrong place or from a stale pool place changes it), the books hold after every step,
  blocks were reused and requests preempted while holding shared blocks."""
  cfg = _fake_cfg(policy, slots, blocks)
  model = fakes.FakeModel(slots, cfg.model.max_len, VOCAB)
  pool = fakes.FakePool(model, BS)
  engine = Engine(cfg, model, None, model.init_cache(), clock_lib.Clock(cfg.clock), pool=pool)
  requests = _shared_prefix_requests(24, seed)
  shared_preempted = []

  def on_step(eng, rec):
    eng.sched.check_invariants()
    assert rec["kv_blocks_cached"] <= rec["kv_blocks_used"] <= blocks
    shared_preempted.extend(i for i in rec["preempted"] if rec["kv_blocks_cached"])

  log = engine.run(requests, on_step=on_step)
  for req, rec in zip(requests, log.requests):
    assert rec["tokens"] == fakes.expected_completion(req.prompt, req.max_new_tokens, VOCAB,
                                                      eos=False), req.id
    assert rec["cached_tokens"] % BS == 0 and rec["cached_tokens"] < len(req.prompt)
  hits = sum(s["prefix_hit_tokens"] for s in log.steps)
  assert pool.loaded * BS == hits > 0 and pool.saved > 0
  assert sum(r["preemptions"] for r in log.requests) > 0 and shared_preempted
  sched = engine.sched  # at the end nothing is held: every cached block is evictable
  assert sched.free_blocks + len(sched.cache) == blocks
  assert all(e.refs == 0 for e in sched.cache.entries.values())


def test_records_have_no_prefix_fields_with_the_cache_off():
  cfg = _fake_cfg("fcfs", 3, 9)
  cfg.serve.prefix_cache = False
  model = fakes.FakeModel(3, cfg.model.max_len, VOCAB)
  log = Engine(cfg, model, None, model.init_cache(), clock_lib.Clock(cfg.clock)).run(
      _shared_prefix_requests(6, 0))
  assert not {"prefix_hit_tokens", "kv_blocks_cached"} & set(log.steps[0])
  assert "cached_tokens" not in log.requests[0]


# ------------------------------------------------------------------ the device pool
@pytest.mark.parametrize("mesh_shape,kind", [(None, "gqa"), ((2, 2, 2), "gqa"),
                                             ((2, 2, 2), "mla")])
def test_pool_copies_blocks_between_slots_exactly(mesh_shape, kind):
  """On one device and on a mesh (slots over data, kv heads over tensor; the one-head latent
  cache of model.attention="mla" whole on each tensor shard): the loaded cache keeps the sharding
  the step expects."""
  cfg = serve_default.get_config("size=tiny")
  m, slots = cfg.model, 4
  if kind == "mla":
    m.update(attention="mla", kv_lora_rank=12, qk_nope_head_dim=4, qk_rope_head_dim=4,
             v_head_dim=4)
  rng = np.random.default_rng(0)
  want = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype),
                      api.init_cache(m, slots))
  mesh = None
  if mesh_shape is not None:
    cfg.mesh.update(data=mesh_shape[0], expert=mesh_shape[1], tensor=mesh_shape[2])
    mesh = mesh_lib.make_mesh(cfg.mesh, m, jax.devices())
  placed = sharding.plan(m, mesh, cfg.logical_axis_rules).cache
  cache = jax.device_put(want, placed)
  pool = prefix_pool.Pool(cache, 5, BS)
  pool.save(cache, [(2, 1, 4), (0, 3, 0)])  # slot 2 block 1 -> place 4, slot 0 block 3 -> 0
  cache = pool.load(cache, [(1, 0, 4), (1, 2, 0)])  # into slot 1's blocks 0 and 2
  assert jax.tree.map(lambda a: a.sharding, cache) == placed
  got = jax.tree.map(np.asarray, cache)
  for w, g in zip(want["layers"], got["layers"]):
    assert set(g) == ({"k"} if kind == "mla" else {"k", "v"})
    for c in g:
      axis = attend.position_axis(c)
      span = lambda b: np.arange(b * BS, (b + 1) * BS)
      np.testing.assert_array_equal(np.take(g[c][1], span(0), axis - 1),
                                    np.take(w[c][2], span(1), axis - 1))
      np.testing.assert_array_equal(np.take(g[c][1], span(2), axis - 1),
                                    np.take(w[c][0], span(3), axis - 1))
      untouched = np.setdiff1d(np.arange(g[c].shape[axis]), np.r_[span(0), span(2)])
      np.testing.assert_array_equal(np.take(g[c][1], untouched, axis - 1),
                                    np.take(w[c][1], untouched, axis - 1))
      np.testing.assert_array_equal(g[c][[0, 2, 3]], w[c][[0, 2, 3]])
