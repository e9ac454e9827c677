"""The overlapped loop (serve.overlap) writes exactly the records the plain loop writes.

Each case runs one workload through two engines, overlap off and on, and compares every record
but wall time. The cases cover what makes a step launched ahead wrong, each asserted to have
dropped one (Engine.overlap_misses): an EOS, and a guessed duration that admits a request early
or late (a hand-built timeline); what planning ahead must put back and the guess must follow,
without a miss in that case: preemption, and capacity drops that change the cost model's
duration; and what reads a step's outputs besides the tokens (routing records, prompt logprobs,
a stop_after cut).
"""
import dataclasses
import json

import numpy as np

from moe_serve.parallel import compiles
from moe_serve.serving.clock import running as clock_lib
from moe_serve.serving.stream import request as request_lib
from moe_serve.serving import run as run_lib
from tests.helpers import serving as serving_helpers
from tests.helpers.serving import tiny_serve_cfg


def _engine(cfg, tiny_model, overlap, clock_cls=clock_lib.Clock):
  cfg = cfg.copy_and_resolve_references()
  cfg.serve.overlap = overlap
  engine = serving_helpers.engine(cfg, tiny_model, clock_cls)
  engine.warmup()
  return engine


def _records(log):
  return json.dumps([log.requests, log.steps], sort_keys=True)


def _both(cfg, tiny_model, requests=None, clock_cls=clock_lib.Clock, **run_kw):
  """(plain log, overlapped log, overlapped engine) for one workload."""
  requests = requests if requests is not None else run_lib.make_requests(cfg)
  plain = _engine(cfg, tiny_model, False, clock_cls).run(requests, **run_kw)
  engine = _engine(cfg, tiny_model, True, clock_cls)
  return plain, engine.run(requests, **run_kw), engine


def _poisson_cfg(**serve):
  cfg = tiny_serve_cfg(**serve)
  cfg.workload.update(num_requests=16, num_priorities=3)
  cfg.workload.arrival.rate = 200.0
  cfg.serve.buckets.update(decode_rows=(4, 8), prefill_rows=(0, 2))  # 4 step shapes
  return cfg


def test_eos_arrivals_and_buckets_give_the_same_records(tiny_model):
  cfg = _poisson_cfg()
  requests = run_lib.make_requests(cfg)
  probe = _engine(cfg, tiny_model, False).run(requests)
  # An EOS id that really ends some requests early: a frequent early token of the probe run.
  early = [t for r in probe.requests for t in r["tokens"][1:4]]
  cfg.serve.eos_id = int(np.bincount(early).argmax())
  plain, over, engine = _both(cfg, tiny_model, requests)
  assert sum(r["finish_reason"] == "eos" for r in plain.requests) >= 3
  assert len({tuple(s["bucket"]) for s in plain.steps}) >= 3
  assert _records(over) == _records(plain)
  # Each EOS made the step launched ahead wrong: it was dropped and the right one run.
  assert 0 < engine.overlap_misses < len(plain.steps) / 2


class _ShapeTimedClock(clock_lib.Clock):
  """The measured clock with a made-up wall time that follows the step's shape, so that a run is
  reproducible: a step with prefill rows takes 40 ms, a decode-only step 10 ms."""

  def step_duration(self, features, wall_s):
    return 0.04 if features["prefill_tokens"] else 0.01


def test_wrongly_guessed_durations_admit_requests_late_or_early(tiny_model):
  """Under the measured clock a step launched ahead is planned at the end of the step before as
  guessed from the last duration (0 for the first step). A (arrives at 0 ms) is prefilled in
  step 0, 40 ms guessed 0: the step planned ahead at 0 ms lacks B (20 ms), the real plan at 40
  ms admits it. Step 2 decodes A and B, 10 ms guessed 40: the step planned ahead at 120 ms
  admits C (105 ms), the real plan at 90 ms does not. No EOS, no preemption, no stop: those two
  misses are the guesses', and the dropped steps leave the records as they are."""
  cfg = tiny_serve_cfg(ignore_eos=True)
  cfg.clock.mode = "measured"
  prompt = tuple(range(3, 11))  # one chunk
  requests = [request_lib.Request(i, prompt, 4, arrival=t, domain="add")
              for i, t in enumerate((0.0, 0.02, 0.105))]
  plain, over, engine = _both(cfg, tiny_model, requests, _ShapeTimedClock)
  admitted = [(round(s["t"], 6), s["admitted"]) for s in plain.steps if s["admitted"]]
  assert admitted == [(0.0, [0]), (0.04, [1]), (0.11, [2])]
  assert sum(r["preemptions"] for r in plain.requests) == 0
  assert engine.overlap_misses == 2
  assert _records(over) == _records(plain)


def test_capacity_drops_preemption_and_prompt_logprobs_give_the_same_records(tiny_model):
  cfg = _poisson_cfg(record_routing=True, prompt_logprobs=True, kv_num_blocks=12,
                     ignore_eos=True)
  cfg.serve.buckets.update(decode_rows=(8,), prefill_rows=(2,))  # one shape: one compile
  cfg.model.router.update(capacity_scope="batch", capacity_factor_prefill=0.5,
                          capacity_factor_decode=0.5)
  model = (run_lib.make_step_fn(cfg), tiny_model[1])  # this router, recording routing
  plain, over, _ = _both(cfg, model)
  assert sum(r["preemptions"] for r in plain.requests) > 0
  assert sum(sum(s["drops"]) for s in plain.steps) > 0
  assert _records(over) == _records(plain)


def test_stop_after_cuts_the_run_at_the_same_step(tiny_model):
  cfg = _poisson_cfg(ignore_eos=True)
  plain, over, _ = _both(cfg, tiny_model, stop_after=[3])
  assert any(r["status"] == "unfinished" for r in plain.requests)
  assert _records(over) == _records(plain)


def test_a_full_batch_of_lengths_misses_nothing_and_compiles_nothing(tiny_model):
  """Requests that all arrive at once and end by length: every step launched ahead is right."""
  cfg = tiny_serve_cfg(ignore_eos=True)
  requests = [dataclasses.replace(r, arrival=0.0) for r in run_lib.make_requests(cfg)]
  engine = _engine(cfg, tiny_model, True)
  with compiles.count_compiles() as n:
    over = engine.run(requests)
  assert n() == 0
  assert engine.overlap_misses == 0
  assert _records(over) == _records(_engine(cfg, tiny_model, False).run(requests))


def test_measured_clock_gives_the_same_tokens_and_accounts_the_wall_time(tiny_model):
  """Under the measured clock, times follow the wall clock (so records differ between runs),
  but tokens do not, and the wall records split each interval into step and host time."""
  cfg = tiny_serve_cfg(ignore_eos=True)
  cfg.clock.mode = "measured"
  requests = run_lib.make_requests(cfg)
  plain, over, _ = _both(cfg, tiny_model, requests)
  tokens = lambda log: {r["id"]: r["tokens"] for r in log.requests}
  assert tokens(over) == tokens(plain)
  assert len(over.wall) == len(over.steps)
  assert all(w["step_s"] >= 0 and w["host_s"] >= 0 for w in over.wall)
  # A step's virtual duration is its wall step time, as without overlap.
  np.testing.assert_allclose([s["dt"] for s in over.steps], [w["step_s"] for w in over.wall],
                             rtol=1e-9)
