"""Scheduler.snapshot/restore (with its sequences and prefix cache) and RunState's, which
serve.overlap's planning ahead relies on: after any steps, a restore puts back exactly the state
of the snapshot, and the run then goes on as if those steps had never happened. No model."""
import copy

import ml_collections
import pytest

from moe_serve.serving.loop import run_state
from moe_serve.serving.stream.request import Request, SamplingParams
from moe_serve.serving.loop.scheduler import Scheduler
from tests.serving import fakes

BS = 4


def _sched(prefix_cache):
  s = ml_collections.ConfigDict(dict(
      policy="fcfs", batching="continuous", max_num_seqs=3, max_num_batched_tokens=64,
      kv_block_size=BS, kv_num_blocks=9, prefix_cache=prefix_cache))
  return Scheduler(s, max_prefill_rows=2, chunk_size=8)


def _req(rid, prompt, max_new):
  return Request(id=rid, prompt=list(prompt), max_new_tokens=max_new, arrival=0.0,
                 domain="add", sampling=SamplingParams(seed=rid))


def _step(sched, now, token):
  """One step as the engine runs it, every sampled token `token`."""
  plan = sched.schedule(now)
  fakes.apply_plan(sched, plan, token)
  return [(s.req.id, s.num_computed) for s in plan.decode] + [
      (s.req.id, n) for s, n in plan.prefill], sched.take_saves()


def _state(sched):
  """Everything the scheduler holds, by request id (comparable across copies)."""
  seqs = sorted([s.req.id, {k: v for k, v in vars(s).items() if k != "req"}]
                for s in (*sched.waiting, *sched.running))
  cache = sched.cache and (
      {k: (e.pool_index, e.refs, e.owner) for k, e in sched.cache.entries.items()},
      list(sched.cache.free_pool), list(sched.cache.unreferenced))
  return (sorted(sched.free_slots), sched.free_blocks, [s.req.id for s in sched.waiting],
          [s.req.id for s in sched.running], seqs, cache, list(sched.saves))


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_restore_puts_back_every_change_and_the_run_goes_on_the_same(prefix_cache):
  shared = list(range(3, 3 + 2 * BS))  # two full blocks every prompt begins with
  sched = _sched(prefix_cache)
  for i in range(4):
    sched.add(_req(i, shared + [20 + i] * (i + 1), 6))
  for t in range(3):
    _step(sched, float(t), 7)
  assert sched.running and sched.waiting
  twin, before = copy.deepcopy(sched), _state(sched)
  snap = sched.snapshot()
  sched.add(_req(9, shared + [30], 3))  # an arrival, then steps: finishes, admissions, hits
  for t in range(3, 9):
    _step(sched, float(t), 8)
  assert _state(sched) != before
  sched.restore(snap)
  assert _state(sched) == before
  if prefix_cache:
    assert sched.cache.entries
  # Both go on alike (new tokens, new finishes), to the end.
  t = 3
  while twin.has_work():
    assert _step(sched, float(t), 5) == _step(twin, float(t), 5)
    t += 1
  assert not sched.has_work() and _state(sched) == _state(twin)


def test_run_state_restore_forgets_arrivals_and_finishes():
  state = run_state.RunState(pending=[], rejected=[], stop_ids=None, nxt=2, seqs=["a", "b"],
                             done=1)
  snap = state.snapshot()
  state.nxt, state.done = 4, 3
  state.seqs += ["c", "d"]
  state.restore(snap)
  assert (state.nxt, state.seqs, state.done) == (2, ["a", "b"], 1)
