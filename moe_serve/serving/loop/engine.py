"""The engine's step loop: schedule, build a fixed-shape StepBatch, run the step, sample, log.

The engine knows the model only through a step function `(params, cache, StepBatch) -> (logits,
cache, aux)` with the cache donated (parallel/steps.py or a sharded variant with the same call);
`run.build_engine` makes one from a config. Step shapes come from a small set of buckets
(serving/loop/buckets.py) and `warmup` compiles them all, so a warmed-up run never compiles again.

Records (plain dicts, written as JSONL by metrics/writers.py):
- `steps`: one per step, only deterministic fields (virtual time, never wall time), among them
  `cost`: the step-cost features the `cost_model` clock prices (serving/clock/step_cost.py), logged
  in both clock modes;
- `wall`: one per step, wall seconds of the step and of the host work around it;
- `requests`: one per request, finished or rejected, in id order.
serving/loop/records.py builds them.

Two loops serve a run, chosen once when the engine is built: `_plain_loop` (one step at a
time) and, with serve.overlap, `_overlapped_loop` (each step planned and launched while the one
before runs, serving/loop/overlap.py); both give the same records.

Axis letters: B decode rows, P prefill rows, L chunk length (a step's shape is (B, P, L)),
R = B + P sampled rows, T flat tokens (parts.FlatOrder), K routing choices per token,
V vocabulary.
"""
import time
import warnings
from typing import NamedTuple

import jax
import numpy as np

from moe_serve.model import parts
from moe_serve.model import transformer
from moe_serve.serving.loop import buckets as buckets_lib
from moe_serve.serving.loop import overlap as overlap_lib
from moe_serve.serving.loop import prefix_pool
from moe_serve.serving.loop import records
from moe_serve.serving.loop import replay as replay_lib
from moe_serve.serving.stream import request as request_lib
from moe_serve.serving.loop import run_state
from moe_serve.serving.loop import sampling
from moe_serve.serving.clock import step_cost
from moe_serve.serving.loop.scheduler import Scheduler


class _Launched(NamedTuple):
  """A step running on the device: its outputs (not yet read) and when it was launched."""
  step: buckets_lib.Step
  logits: dict
  aux: dict
  tokens: jax.Array  # [R]
  logprobs: jax.Array  # [R]
  t_launch: float
  # The overlapped loop's: since when the device may have had nothing queued before this launch
  # (None: the step before was still running; overlap_lib.wall_times).
  idle_from: float | None = None


class _Outputs(NamedTuple):
  """A step's outputs read to the host (`Engine._read`)."""
  tokens: np.ndarray  # [R]
  logprobs: np.ndarray  # [R]
  kept: np.ndarray  # kept (token, choice) pairs per MoE layer and expert (step_cost.py)
  drops: list | None  # per MoE layer, with serve.record_routing


class RunLog(NamedTuple):
  """What `Engine.run` returns: the three record lists (see the module docstring)."""
  requests: list
  steps: list
  wall: list


class Engine:
  """Serves a list of requests through `step_fn` on virtual time (see module docstring)."""

  def __init__(self, cfg, step_fn, params, cache, clock, pool=None):
    """`pool`: the prefix cache's block copier (serving/prefix_pool.Pool, built from `cache`
    when serve.prefix_cache is set and none is given)."""
    s = cfg.serve
    self.cfg, self.step_fn, self.params, self.cache, self.clock = cfg, step_fn, params, cache, clock
    self.buckets = buckets_lib.Buckets.from_config(s.buckets, cfg.model.max_len)
    self._new_scheduler = lambda: Scheduler(s, max(self.buckets.prefill_rows),
                                            max(self.buckets.chunk_lens))
    self.sched = self._new_scheduler()
    self.limits = request_lib.limits_from_config(cfg)
    self.eos_id = None if s.ignore_eos else int(s.eos_id)
    self.record_routing = bool(s.record_routing)
    self.want_prompt_logprobs = bool(s.prompt_logprobs)
    # Routing replay (serving/loop/replay.py): every step then carries forced codes (0 = free).
    self.replay_routing, self._replay = bool(s.get("replay_routing", False)), {}
    m = cfg.model
    self._codes_shape = (transformer.num_moe_layers(m), m.router.k)
    self._warned_routing = False
    self.step_cost = step_cost.StepCost(cfg)
    self.invariant = bool(m.get("batch_invariant", False))  # the sampler's rows tiled too
    # The loop, chosen once (as vLLM v1 picks `step` or `step_with_batch_queue`), and how it
    # feeds a step's decode tokens (the overlapped loop: on the device, serving/loop/overlap.py).
    if s.get("overlap", False):
      self._loop, self._feed = self._overlapped_loop, overlap_lib.Feed()
    else:
      self._loop, self._feed = self._plain_loop, overlap_lib.NO_FEED
    self.state = None  # the run in progress (run_state.RunState)
    self.prefix_cache = bool(s.get("prefix_cache", False))
    if self.prefix_cache and pool is None:
      pool = prefix_pool.Pool(cache, s.kv_num_blocks, s.kv_block_size)
    self.pool = pool if self.prefix_cache else None

  # ------------------------------------------------------------------ warm-up
  def warmup(self, progress=None):
    """Compiles the step and the sampler for every bucket with all-padding batches, fed as the
    loop feeds them; `progress(what, done, total)` is called after each (scripts show it as a
    progress line).

    Two passes: a freshly built cache is not yet committed to a device, while the step's donated
    output is, and jit keys its compilations on that; the second pass compiles the committed
    signature of the first bucket (with one bucket it would otherwise compile in the run).
    """
    shapes = [(s, kv) for s in self.buckets.all() for kv in self.buckets.kv_lens] * 2
    sampled = {}  # R: a step's sampled tokens [R]
    for i, ((b, p, c), kv) in enumerate(shapes):
      batch = self._with_replay(parts.StepBatch(parts.empty_part(b, 1), parts.empty_part(p, c)),
                                None, (b, p, c))
      logits, self.cache, _ = self._step(self._feed.batch(batch), kv)
      out = sampling.sample(logits["decode"], logits["prefill"],
                            sampling.SamplingBatch.padding(b, p), self.invariant)
      jax.block_until_ready(out)
      sampled[b + p] = out[0]
      if self.want_prompt_logprobs and p:
        jax.block_until_ready(sampling.prompt_logprobs(logits["prefill"], np.zeros((p, c),
                                                                                    np.int32)))
      if progress is not None:
        progress("compile step shapes", i + 1, len(shapes))
    self._feed.warm(sampled.values(), self.buckets.decode_rows)
    if self.pool is not None:  # every block of every slot at most, in one step
      s = self.cfg.serve
      self.cache = self.pool.warm(self.cache, s.max_num_seqs * -(-self.cfg.model.max_len //
                                                                  s.kv_block_size))

  # ------------------------------------------------------------------ batch building
  def _build(self, plan):
    """buckets.build, with the plan's replayed routing (serve.replay_routing)."""
    shape, batch, samp, kv, kv_len = buckets_lib.build(plan, self.buckets)
    return shape, self._with_replay(batch, plan, shape), samp, kv, kv_len

  def _step(self, batch, kv_len):
    """The step function on `batch`, reading `kv_len` cache positions (only passed when the
    config has kv-length buckets, so step functions without the argument still serve)."""
    if len(self.buckets.kv_lens) == 1:
      return self.step_fn(self.params, self.cache, batch)
    return self.step_fn(self.params, self.cache, batch, kv_len=kv_len)

  def _with_replay(self, batch, plan, shape):
    if not self.replay_routing:
      return batch
    replay = self._replay if plan is not None else None
    return batch._replace(forced_TxYxK=replay_lib.forced_codes(plan, shape, replay,
                                                               *self._codes_shape))

  # ------------------------------------------------------------------ a run
  def run(self, requests, on_step=None, tracer=None, stop_after=None, replay=None,
          warm_prefix_cache=False) -> RunLog:
    """Serves `requests` (any order) to completion; returns the records. `on_step(engine, rec)`.

    `tracer` (experiments/probes/trace.py) records chosen requests' distributions and routing. With
    `stop_after` (request ids), the run ends as soon as those requests are finished or rejected;
    requests still in flight then are recorded with status "unfinished". `warm_prefix_cache`
    keeps the blocks the prefix cache held at the end of the last run (else every run starts
    cold). `replay` ({request id: [U, Y, K] codes}, serving/loop/replay.py; needs
    serve.replay_routing) forces those requests' recorded routing.

    Each run starts at virtual time 0 with an empty scheduler; the cache keeps whatever earlier
    runs wrote (harmless: attention never reads past a request's own positions). With
    serve.overlap each step is planned and launched while the one before runs (serving/
    overlap.py); the records are the same as without.
    """
    if replay and not self.replay_routing:
      raise ValueError("Engine.run(replay=...) needs an engine built with serve.replay_routing")
    self._replay = dict(replay or {})
    cached = self.sched.cache if warm_prefix_cache else None
    self.sched, self.clock.now = self._new_scheduler(), 0.0
    if cached is not None:
      self.sched.adopt(cached)
    seen, rejected, accepted = set(), [], []
    for req in requests:
      reason = request_lib.check(req, self.limits, seen)
      if isinstance(req.id, (int, np.integer)):
        seen.add(req.id)
      (rejected if reason else accepted).append((req, reason))
    st = self.state = run_state.RunState(
        pending=sorted((r for r, _ in accepted), key=lambda r: (r.arrival, r.id)),
        rejected=rejected, done=len(rejected),
        stop_ids=None if stop_after is None else set(int(i) for i in stop_after))
    self._loop(on_step, tracer)
    return RunLog(records.request_records(st.seqs, rejected, self.prefix_cache), st.steps,
                  st.wall)

  @property
  def done(self):
    """Requests finished or rejected so far in `run` (for progress bars)."""
    return self.state.done if self.state else 0

  @property
  def overlap_misses(self):
    """Steps launched ahead in the last `run` and then dropped (serving/loop/overlap.py)."""
    return self.state.misses if self.state else 0

  def _plain_loop(self, on_step, tracer):
    """One step at a time:
    1. plan and build the next step (`_next_step`: admits arrivals; None ends the run);
    2. launch it and read its outputs (`_launch`, `_read`);
    3. apply them and append its records (`_commit`, `_end_step`).
    Wall: step_s from the launch to the outputs on the host; host_s the rest of the time since
    planning began.
    """
    while (step := self._next_step()) is not None:
      launched = self._launch(step, step.batch)
      out = self._read(launched, tracer)
      step_s = time.perf_counter() - launched.t_launch
      rec = self._commit(step, out, step_s)
      self._end_step(rec, step_s, time.perf_counter() - step.t_host - step_s, on_step)

  def _overlapped_loop(self, on_step, tracer):
    """Each step planned and launched while the one before runs (serve.overlap; the helpers
    and why the records are the plain loop's: serving/loop/overlap.py):
    1. plan, build and launch the first step;
    2. while step N runs, plan step N+1 from N's placeholder outputs and launch it, its decode
       tokens fed on the device from N's (`_launch_ahead`; not when a prefill chunk needs N's
       tokens on the host);
    3. read step N's outputs, apply them and append its records, as the plain loop does;
    4. plan step N+1 from the real state: keep the step launched ahead if it computes exactly
       that, else drop it (a miss) and launch the real one.
    Wall: a step's interval runs from the step before's outputs on the host to its own; host_s
    is the part when the device may have had nothing queued (overlap_lib.wall_times).
    """
    st, last_ready = self.state, None
    inflight = self._launch_fed(self._next_step(), None, None)
    while inflight is not None:
      ahead = self._launch_ahead(inflight)
      out = self._read(inflight, tracer)
      t_ready = time.perf_counter()
      step_s, host_s = overlap_lib.wall_times(t_ready, last_ready, inflight.t_launch,
                                              inflight.idle_from)
      last_ready = t_ready
      self._end_step(self._commit(inflight.step, out, step_s), step_s, host_s, on_step)
      step = self._next_step()
      keep = (ahead is not None and step is not None and
              overlap_lib.same_step(ahead.step, step, out.tokens))
      st.misses += ahead is not None and not keep
      inflight = ahead._replace(step=step) if keep else self._launch_fed(step, None, last_ready)

  # ------------------------------------------------------------------ one step
  def _next_step(self):
    """Admits arrivals, plans and builds the next step (jumping idle time to the next arrival);
    None when the run is over."""
    st, sched, clock = self.state, self.sched, self.clock
    while True:
      if st.stopped() or (st.nxt == len(st.pending) and not sched.has_work()):
        return None
      while st.nxt < len(st.pending) and st.pending[st.nxt].arrival <= clock.now:
        st.seqs.append(sched.add(st.pending[st.nxt]))
        st.nxt += 1
      if sched.has_work():
        break
      clock.jump_to(st.pending[st.nxt].arrival)
    t_host = time.perf_counter()
    start = clock.now
    plan = sched.schedule(start)
    blocks_in_step = sched.blocks_used  # before this step's finishes free theirs
    if not plan.decode and not plan.prefill:
      raise RuntimeError(f"scheduler made no progress at t={start} (waiting "
                         f"{len(sched.waiting)}, running {len(sched.running)}): a bug")
    return buckets_lib.Step(plan, *self._build(plan), start, blocks_in_step, t_host,
                            sched.blocks_cached)

  def _launch(self, step, batch):
    """Runs `step` (its `batch` as the loop feeds it) without waiting for it."""
    t_launch = time.perf_counter()
    if step.plan.loads:  # cached prefix blocks into the admitted requests' slots
      self.cache = self.pool.load(self.cache, step.plan.loads)
    logits, self.cache, aux = self._step(batch, step.kv_len)
    tokens, logprobs = sampling.sample(logits["decode"], logits["prefill"], step.samp,
                                       self.invariant)
    return _Launched(step, logits, aux, tokens, logprobs, t_launch)

  def _launch_fed(self, step, prev, last_ready):
    """The overlapped loop's launch: `step` with its decode tokens fed on the device from the
    launched step `prev` (None: from none, the step before was read at `last_ready`)."""
    if step is None:
      return None
    prev_done = prev is not None and prev.tokens.is_ready()  # before more is queued
    launched = self._launch(step, self._feed.batch(step.batch, prev and prev.tokens))
    if prev is None:  # the device had nothing queued since the step before was read
      return launched._replace(idle_from=last_ready or launched.t_launch)
    return launched._replace(idle_from=prev.t_launch if prev_done else None)

  def _launch_ahead(self, inflight):
    """Plans the step after `inflight` from its placeholder outputs (overlap_lib.plan_ahead)
    and launches it; None when there is none or a prefill chunk needs inflight's tokens."""
    st = self.state
    dt = overlap_lib.guess_dt(self.clock, self.step_cost, inflight.step, st.last_dt,
                              st.last_kept)
    step = overlap_lib.plan_ahead(self.sched, self.clock, st,
                                  lambda: self._apply(inflight.step, None, None, dt),
                                  self._next_step)
    if step is None or (step.batch.prefill.tokens_BxL < 0).any():
      return None
    return self._launch_fed(step, inflight, None)

  def _read(self, launched, tracer):
    """Waits for a launched step's outputs and reads them to the host; prompt logprobs and the
    tracer's records are taken from them here too."""
    step, aux = launched.step, launched.aux
    toks, lps, kept = jax.device_get(
        (launched.tokens, launched.logprobs, aux.get("kept_pairs", np.zeros((0, 0), np.int32))))
    drops = self._drops(aux, step.batch, step.plan)  # device->host copies: timed with the step
    if self.want_prompt_logprobs:
      records.add_prompt_logprobs(launched.logits, step.plan, step.shape)
    if tracer is not None:
      tracer.record(launched.logits, aux, step.plan, step.shape)
    return _Outputs(toks, lps, kept, drops)

  def _drops(self, aux, batch, plan):
    if not self.record_routing:
      return None
    drops = records.step_drops(aux, batch, plan)
    if drops is None and not self._warned_routing:
      warnings.warn("serve.record_routing is set but the step returned no routing records "
                    "(aux['routing']); drops are not logged for this run")
      self._warned_routing = True
    return drops

  def _commit(self, step, out, wall_s):
    """Applies a step's outputs: the clock prices it (`wall_s`: its wall time, for the measured
    clock), its sequences advance, new prefix blocks are saved; appends and returns its record."""
    st = self.state
    cost = self.step_cost.features(step.shape, step.kv_len, out.kept)
    st.last_dt = self.clock.step_duration(cost, wall_s)
    st.last_kept = out.kept
    now = self._apply(step, out.tokens.tolist(), out.logprobs.tolist(), st.last_dt)
    if self.pool is not None:
      self.pool.save(self.cache, self.sched.take_saves())
    rec = records.step_record(len(st.steps), step, now, self.sched, out.drops, cost,
                              self.prefix_cache)
    st.steps.append(rec)
    return rec

  def _end_step(self, rec, step_s, host_s, on_step):
    self.state.wall.append(dict(step=rec["step"], step_s=step_s, host_s=host_s))
    if on_step is not None:
      on_step(self, rec)

  def _apply(self, step, toks, lps, dt):
    """Advances the step's sequences and the clock by `dt`; `toks`/`lps` [R] as lists, or None
    for placeholders (overlap_lib.placeholder) and no EOS. Returns the new time."""
    plan, b = step.plan, step.shape[0]
    now = self.clock.advance(dt)
    tok = (lambda r: toks[r]) if toks is not None else overlap_lib.placeholder
    lp = (lambda r: lps[r]) if lps is not None else (lambda r: 0.0)
    for i, seq in enumerate(plan.decode):
      seq.advance_decode()
      self.sched.computed(seq)  # prefix cache: register completed blocks before a finish
      self._emit(seq, tok(i), lp(i), now)
    for j, (seq, n) in enumerate(plan.prefill):
      prefilled = seq.advance_prefill(n)
      self.sched.computed(seq)
      if prefilled:
        self._emit(seq, tok(b + j), lp(b + j), now)
    return now

  def _emit(self, seq, token, logprob, now):
    seq.append_output(token, logprob, now)
    if token == self.eos_id and not seq.req.ignore_eos:
      self.sched.finish(seq, "eos")
      self.state.done += 1
    elif len(seq.outputs) >= seq.req.max_new_tokens:
      self.sched.finish(seq, "length")
      self.state.done += 1
