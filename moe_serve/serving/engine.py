"""The engine's step loop: schedule, build a fixed-shape StepBatch, run the step, sample, log.

The engine knows the model only through a step function `(params, cache, StepBatch) -> (logits,
cache, aux)` with the cache donated (parallel/steps.py or a sharded variant with the same call);
`run.build_engine` makes one from a config. Step shapes come from a small set of buckets
(`Buckets`: rows, chunk length, and how many cache positions attention reads) and `warmup`
compiles them all, so a warmed-up run never compiles again.

Records (plain dicts, written as JSONL by metrics/writers.py):
- `steps`: one per step, only deterministic fields (virtual time, never wall time), among them
  `cost`: the step-cost features the `cost_model` clock prices (serving/step_cost.py), logged
  in both clock modes;
- `wall`: one per step, wall seconds of the step and of the host work around it;
- `requests`: one per request, finished or rejected, in id order.

Axis letters: B decode rows, P prefill rows, C chunk length (a step's shape is (B, P, C)),
R = B + P sampled rows, T flat tokens (parts.FlatOrder), K routing choices per token,
V vocabulary.
"""
import time
import warnings
from typing import NamedTuple

import jax
import numpy as np

from moe_serve.metrics import routing as routing_metrics
from moe_serve.model import parts
from moe_serve.model import transformer
from moe_serve.serving import overlap as overlap_lib
from moe_serve.serving import prefix_pool
from moe_serve.serving import replay as replay_lib
from moe_serve.serving import request as request_lib
from moe_serve.serving import sampling
from moe_serve.serving import step_cost
from moe_serve.serving.scheduler import Scheduler


class Buckets(NamedTuple):
  """Allowed step shapes: decode rows B, prefill rows P, chunk length C, and the cache
  positions attention reads, kv_len (each sorted; kv_lens always ends with the model's max_len)."""
  decode_rows: tuple
  prefill_rows: tuple
  chunk_lens: tuple
  kv_lens: tuple

  @classmethod
  def from_config(cls, b, max_len):
    """From the `serve.buckets` config section and the model's max_len."""
    rows = (tuple(sorted(int(x) for x in v)) for v in (b.decode_rows, b.prefill_rows,
                                                         b.chunk_lens))
    kv = tuple(sorted({int(x) for x in b.get("kv_lens", ())} | {int(max_len)}))
    return cls(*rows, kv)

  def pick_kv(self, positions_needed):
    """The smallest kv_len covering `positions_needed` cache positions."""
    return next(o for o in self.kv_lens if o >= positions_needed)

  def pick(self, n_decode, n_prefill, longest_chunk):
    """The smallest (B, P, C) holding that many decode rows, prefill rows and chunk tokens."""
    first_fit = lambda opts, n: next(o for o in opts if o >= n)
    return (first_fit(self.decode_rows, n_decode), first_fit(self.prefill_rows, n_prefill),
            first_fit(self.chunk_lens, longest_chunk))

  def all(self):
    """Every step shape (B, P, C) a run may use, each once (what `Engine.warmup` compiles)."""
    return [(b, p, c) for b in self.decode_rows for p in self.prefill_rows for c in self.chunk_lens
            if p > 0 or c == self.chunk_lens[0]]  # with no prefill rows C is irrelevant


class _Step(NamedTuple):
  """A planned step: its plan, what `_build` made of it, and the scheduler's state then."""
  plan: object  # scheduler.Plan
  shape: tuple  # (B, P, C)
  batch: parts.StepBatch  # numpy
  samp: sampling.SamplingBatch
  kv: int  # attended_kv
  kv_len: int
  start: float  # virtual time
  blocks_in_step: int
  t_host: float  # perf_counter when planning began
  blocks_cached: int = 0  # of blocks_in_step, held by the prefix cache


class _Launched(NamedTuple):
  """A step running on the device: its outputs (not yet read) and when it was launched."""
  step: _Step
  logits: dict
  aux: dict
  tokens: jax.Array  # [R]
  logprobs: jax.Array  # [R]
  t_launch: float
  # Overlap only: since when the device may have had nothing queued before this launch (None:
  # the step before was still running; see `_complete`).
  idle_from: float | None


class RunLog(NamedTuple):
  """What `Engine.run` returns: the three record lists (see the module docstring)."""
  requests: list
  steps: list
  wall: list


def _routing_records(aux):
  """`kept` [T, K] of each MoE layer's Routing in aux, as numpy, or None if not recorded."""
  recs = aux.get("routing")
  return [np.asarray(r.kept) for r in recs] if recs else None


class Engine:
  """Serves a list of requests through `step_fn` on virtual time (see module docstring)."""

  def __init__(self, cfg, step_fn, params, cache, clock, pool=None):
    """`pool`: the prefix cache's block copier (serving/prefix_pool.Pool, built from `cache`
    when serve.prefix_cache is set and none is given)."""
    s = cfg.serve
    self.cfg, self.step_fn, self.params, self.cache, self.clock = cfg, step_fn, params, cache, clock
    self.buckets = Buckets.from_config(s.buckets, cfg.model.max_len)
    self._new_scheduler = lambda: Scheduler(s, max(self.buckets.prefill_rows),
                                            max(self.buckets.chunk_lens))
    self.sched = self._new_scheduler()
    self.limits = request_lib.limits_from_config(cfg)
    self.eos_id = None if s.ignore_eos else int(s.eos_id)
    self.record_routing = bool(s.record_routing)
    self.want_prompt_logprobs = bool(s.prompt_logprobs)
    # Routing replay (serving/replay.py): every step then carries forced codes (0 = free).
    self.replay_routing, self._replay = bool(s.get("replay_routing", False)), {}
    m = cfg.model
    self._codes_shape = (transformer.num_moe_layers(m), m.router.k)
    self._warned_routing = False
    self.step_cost = step_cost.StepCost(cfg)
    self.invariant = bool(m.get("batch_invariant", False))  # the sampler's rows tiled too
    self.overlap = bool(s.get("overlap", False))
    if self.overlap and jax.process_count() > 1:
      raise ValueError("serve.overlap is single-process only: every process would have to "
                       "drop the same steps launched ahead; set serve.overlap=false")
    # overlap_lib.feed's `prev` when no step before is in flight: committed, like a step's tokens.
    self._no_prev = (jax.device_put(np.zeros(1, np.int32), jax.devices()[0]) if self.overlap
                     else None)
    self._run = None  # the state of the run in progress (`run`)
    self.prefix_cache = bool(s.get("prefix_cache", False))
    if self.prefix_cache and pool is None:
      pool = prefix_pool.Pool(cache, s.kv_num_blocks, s.kv_block_size)
    self.pool = pool if self.prefix_cache else None

  # ------------------------------------------------------------------ warm-up
  def warmup(self, progress=None):
    """Compiles the step and the sampler for every bucket with all-padding batches;
    `progress(what, done, total)` is called after each (scripts show it as a progress line).

    Two passes: a freshly built cache is not yet committed to a device, while the step's donated
    output is, and jit keys its compilations on that; the second pass compiles the committed
    signature of the first bucket (with one bucket it would otherwise compile in the run).
    """
    shapes = [(s, kv) for s in self.buckets.all() for kv in self.buckets.kv_lens] * 2
    sampled = {}  # R: a step's sampled tokens [R]
    for i, ((b, p, c), kv) in enumerate(shapes):
      batch = self._with_replay(parts.StepBatch(parts.empty_part(b, 1), parts.empty_part(p, c)),
                                None, (b, p, c))
      if self.overlap:  # the step then takes its decode tokens from overlap_lib.feed
        batch = batch._replace(decode=batch.decode._replace(
            tokens_BxL=overlap_lib.feed(self._no_prev, batch.decode.tokens_BxL)))
      logits, self.cache, _ = self._step(batch, kv)
      out = sampling.sample(logits["decode"], logits["prefill"],
                            sampling.SamplingBatch.padding(b, p), self.invariant)
      jax.block_until_ready(out)
      sampled[b + p] = out[0]
      if self.want_prompt_logprobs and p:
        jax.block_until_ready(sampling.prompt_logprobs(logits["prefill"], np.zeros((p, c),
                                                                                    np.int32)))
      if progress is not None:
        progress("compile step shapes", i + 1, len(shapes))
    if self.overlap:  # feed from every step's sampled rows R to every decode row count B
      for prev in sampled.values():
        for b in self.buckets.decode_rows:
          jax.block_until_ready(overlap_lib.feed(prev, np.zeros((b, 1), np.int32)))
    if self.pool is not None:  # every block of every slot at most, in one step
      s = self.cfg.serve
      self.cache = self.pool.warm(self.cache, s.max_num_seqs * -(-self.cfg.model.max_len //
                                                                  s.kv_block_size))

  # ------------------------------------------------------------------ batch building
  def _build(self, plan):
    # One request per row is what the step's `sequence`-scope expert buffers are sized by; each
    # row below is filled from one request, so only a request in two rows could break it.
    parts.check_distinct_requests([s.req.id for s in plan.decode] +
                                  [s.req.id for s, _ in plan.prefill])
    longest = max((n for _, n in plan.prefill), default=1)
    b, p, c = self.buckets.pick(len(plan.decode), len(plan.prefill), longest)
    d_tok, d_slot, d_pos, d_seg = (np.zeros(b, np.int32) for _ in range(4))
    d_seg -= 1
    p_tok = np.zeros((p, c), np.int32)
    p_slot, p_start, p_len, p_seg = (np.zeros(p, np.int32) for _ in range(4))
    p_seg -= 1
    samp = sampling.SamplingBatch.padding(b, p)
    kv = 0  # attended_kv: each real token attends to its position + 1 keys
    held = 1  # cache positions the step's attention must read (its longest row's end)
    for i, seq in enumerate(plan.decode):
      n = seq.num_computed
      d_tok[i], d_slot[i], d_pos[i], d_seg[i] = seq.tokens[-1], seq.slot, n, seq.req.id
      samp.set_row(i, seq.req.sampling, n + 1)
      kv += n + 1
      held = max(held, n + 1)
    for j, (seq, n) in enumerate(plan.prefill):
      start = seq.num_computed
      p_tok[j, :n] = seq.tokens[start:start + n]
      p_slot[j], p_start[j], p_len[j], p_seg[j] = seq.slot, start, n, seq.req.id
      samp.last_P[j] = n - 1
      samp.set_row(b + j, seq.req.sampling, start + n)
      kv += n * start + n * (n + 1) // 2
      held = max(held, start + n)
    batch = parts.StepBatch(parts.decode_part(d_tok, d_slot, d_pos, d_seg),
                            parts.chunk_part(p_tok, p_slot, p_start, p_len, p_seg))
    return ((b, p, c), self._with_replay(batch, plan, (b, p, c)), samp, kv,
            self.buckets.pick_kv(held))

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

  # ------------------------------------------------------------------ bookkeeping
  def _emit(self, seq, token, logprob, now):
    seq.append_output(token, logprob, now)
    if token == self.eos_id and not seq.req.ignore_eos:
      self.sched.finish(seq, "eos")
      self._run["done"] += 1
    elif len(seq.outputs) >= seq.req.max_new_tokens:
      self.sched.finish(seq, "length")
      self._run["done"] += 1

  def _prompt_logprobs(self, logits, plan, shape):
    """Appends log p(prompt[q] | prompt[:q]) for the prompt positions q this step's chunks scored
    (each once: a recomputed prefix after preemption is not scored again)."""
    targets = np.full(shape[1:], -1, np.int32)
    for j, (seq, n) in enumerate(plan.prefill):
      lo = max(seq.num_computed, len(seq.prompt_logprobs))  # chunk position i predicts lo + i + 1
      hi = min(seq.num_computed + n, len(seq.req.prompt) - 1)
      offs = lo - seq.num_computed
      targets[j, offs:offs + max(hi - lo, 0)] = seq.req.prompt[lo + 1:hi + 1]
    if (targets < 0).all():
      return
    lp = np.asarray(sampling.prompt_logprobs(logits["prefill"], targets))
    for j, (seq, n) in enumerate(plan.prefill):
      keep = targets[j] >= 0
      seq.add_prompt_logprobs(lp[j][keep].tolist())

  def _drops(self, aux, batch, plan):
    if not self.record_routing:
      return None
    kept = _routing_records(aux)
    if kept is None:
      if not self._warned_routing:
        warnings.warn("serve.record_routing is set but the step returned no routing records "
                      "(aux['routing']); drops are not logged for this run")
        self._warned_routing = True
      return None
    step_parts = (batch.decode, batch.prefill)
    seg_T = parts.FlatOrder.of(step_parts).flatten([p.segment_ids_BxL for p in step_parts], np)
    per_req = routing_metrics.drops_by_request(kept, seg_T)
    for seq in plan.decode + [s for s, _ in plan.prefill]:
      seq.add_drops(per_req.get(seq.req.id, [0] * len(kept)))
    return [int(x) for x in routing_metrics.drops_per_layer(kept, seg_T)]

  # ------------------------------------------------------------------ the loop
  def run(self, requests, on_step=None, tracer=None, stop_after=None, replay=None,
          warm_prefix_cache=False) -> RunLog:
    """Serves `requests` (any order) to completion; returns the records. `on_step(engine, rec)`.

    `tracer` (serving/trace.py) records chosen requests' distributions and routing. With
    `stop_after` (request ids), the run ends as soon as those requests are finished or rejected;
    `warm_prefix_cache` keeps the blocks the prefix cache held at the end of the last run (else
    every run starts cold);
    requests still in flight then are recorded with status "unfinished". `replay` ({request id:
    [U, Y, K] codes}, serving/replay.py; needs serve.replay_routing) forces those requests'
    recorded routing.

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
    self._run = dict(
        pending=sorted((r for r, _ in accepted), key=lambda r: (r.arrival, r.id)), nxt=0,
        seqs=[], rejected=rejected, done=len(rejected), steps=[], wall=[], misses=0,
        stop_ids=None if stop_after is None else set(int(i) for i in stop_after),
        last=dict(dt=0.0, kept=np.zeros((0, 0), np.int32), ready=None))
    inflight = self._launch(self._next_step(), None)
    while inflight is not None:
      ahead = self._launch_ahead(inflight) if self.overlap else None
      self._complete(inflight, on_step, tracer)
      step = self._next_step()
      if ahead is not None and step is not None and self._same_step(ahead, step):
        inflight = ahead._replace(step=step)
      else:
        self._run["misses"] += ahead is not None
        inflight = self._launch(step, None)
    r = self._run
    records = self._request_records(r["seqs"], rejected)
    if self.prefix_cache:  # vLLM's num_cached_tokens: the first admission's cached prefix, and
      seqs = {s.req.id: s for s in r["seqs"]}  # whose steps computed its blocks (forensics)
      for rec in records:
        if rec["status"] != "rejected":
          rec.update(cached_tokens=seqs[rec["id"]].cached_tokens,
                     cached_from=sorted(set(seqs[rec["id"]].cached_from or ())))
    return RunLog(records, r["steps"], r["wall"])

  @property
  def done(self):
    """Requests finished or rejected so far in `run` (for progress bars)."""
    return self._run["done"] if self._run else 0

  @property
  def overlap_misses(self):
    """Steps launched ahead in the last `run` and then dropped (serving/overlap.py)."""
    return self._run["misses"] if self._run else 0

  def _next_step(self):
    """Admits arrivals, plans and builds the next step (jumping idle time to the next arrival);
    None when the run is over."""
    r, sched, clock = self._run, self.sched, self.clock
    while True:
      if r["stop_ids"] is not None and r["stop_ids"] <= self._ended(r["seqs"], r["rejected"]):
        return None
      if r["nxt"] == len(r["pending"]) and not sched.has_work():
        return None
      while r["nxt"] < len(r["pending"]) and r["pending"][r["nxt"]].arrival <= clock.now:
        r["seqs"].append(sched.add(r["pending"][r["nxt"]]))
        r["nxt"] += 1
      if sched.has_work():
        break
      clock.jump_to(r["pending"][r["nxt"]].arrival)
    t_host = time.perf_counter()
    start = clock.now
    plan = sched.schedule(start)
    blocks_in_step = sched.blocks_used  # before this step's finishes free theirs
    if not plan.decode and not plan.prefill:
      raise RuntimeError(f"scheduler made no progress at t={start} (waiting "
                         f"{len(sched.waiting)}, running {len(sched.running)}): a bug")
    return _Step(plan, *self._build(plan), start, blocks_in_step, t_host, sched.blocks_cached)

  def _launch(self, step, prev):
    """Runs `step` on the device without waiting for it; `prev`: the launched step whose sampled
    tokens fill the decode rows' placeholders (overlap only)."""
    if step is None:
      return None
    batch = step.batch
    if self.overlap:
      tokens = batch.decode.tokens_BxL
      batch = batch._replace(decode=batch.decode._replace(tokens_BxL=overlap_lib.feed(
          self._no_prev if prev is None else prev.tokens, tokens)))
    t_launch = time.perf_counter()
    idle_from = None  # only the overlapped loop's wall records use it (`_complete`)
    if prev is not None:  # launched ahead: the device is idle only if `prev` has finished
      idle_from = prev.t_launch if prev.tokens.is_ready() else None
    elif self.overlap:  # launched after the step before was read (or first)
      idle_from = self._run["last"]["ready"] or t_launch
    if step.plan.loads:  # cached prefix blocks into the admitted requests' slots
      self.cache = self.pool.load(self.cache, step.plan.loads)
    logits, self.cache, aux = self._step(batch, step.kv_len)
    tokens, logprobs = sampling.sample(logits["decode"], logits["prefill"], step.samp,
                                       self.invariant)
    return _Launched(step, logits, aux, tokens, logprobs, t_launch, idle_from)

  def _launch_ahead(self, inflight):
    """Plans and launches the step after `inflight` before its tokens are read (see
    serving/overlap.py); None when that plan needs those tokens on the host."""
    plan = inflight.step.plan
    snap = overlap_lib.Snapshot(self.sched, self.clock, self._run,
                                plan.decode + [seq for seq, _ in plan.prefill])
    try:
      self._apply(inflight.step, None, None, self._guess_dt(inflight.step))
      step = self._next_step()
    finally:
      snap.restore()
    if step is None or (step.batch.prefill.tokens_BxL < 0).any():
      return None
    return self._launch(step, inflight)

  def _guess_dt(self, step):
    """The duration a step will likely get: the cost model's with the last step's kept pairs,
    or the last measured duration."""
    last = self._run["last"]
    if self.clock.mode != "cost_model":
      return last["dt"]
    return self.clock.step_duration(self.step_cost.features(step.shape, step.kv_len,
                                                            last["kept"]), 0.0)

  def _same_step(self, ahead, step):
    """Whether the step launched ahead computes exactly what `step` (planned from the real
    state) asks for, its placeholders read from the step before's sampled tokens (equal inputs
    also mean an equal kv_len: it follows the rows' positions)."""
    decode = ahead.step.batch.decode
    fed = ahead.step.batch._replace(decode=decode._replace(tokens_BxL=overlap_lib.resolve(
        decode.tokens_BxL, self._run["last"]["tokens"])))
    return overlap_lib.same_batch((fed, ahead.step.samp), (step.batch, step.samp))

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

  def _complete(self, launched, on_step, tracer):
    """Reads a launched step's results, applies them and appends its records."""
    step, aux, r = launched.step, launched.aux, self._run
    plan, shape = step.plan, step.shape
    toks, lps, kept_pairs = jax.device_get(
        (launched.tokens, launched.logprobs, aux.get("kept_pairs", np.zeros((0, 0), np.int32))))
    drops = self._drops(aux, step.batch, plan)  # device->host copies: timed with the step
    if self.want_prompt_logprobs:
      self._prompt_logprobs(launched.logits, plan, shape)
    if tracer is not None:
      tracer.record(launched.logits, aux, plan, shape)
    t_ready = time.perf_counter()
    if self.overlap:
      # The interval since the step before was read, less an upper bound of the time the device
      # had nothing queued before this step's launch (host time on the critical path).
      interval = t_ready - (r["last"]["ready"] or launched.t_launch)
      host_s = 0.0 if launched.idle_from is None else min(
          max(launched.t_launch - launched.idle_from, 0.0), interval)
      wall_step = interval - host_s
    else:
      wall_step = t_ready - launched.t_launch
    r["last"]["ready"] = t_ready
    cost = self.step_cost.features(shape, step.kv_len, kept_pairs)
    dt = self.clock.step_duration(cost, wall_step)
    r["last"].update(dt=dt, kept=kept_pairs, tokens=toks)
    now = self._apply(step, toks.tolist(), lps.tolist(), dt)
    if self.pool is not None:
      self.pool.save(self.cache, self.sched.take_saves())
    in_step = plan.decode + [s for s, _ in plan.prefill]
    rec = dict(step=len(r["steps"]), t=step.start, dt=now - step.start, bucket=list(shape),
               kv_len=step.kv_len, decode=len(plan.decode), prefill_rows=len(plan.prefill),
               prefill_tokens=sum(n for _, n in plan.prefill), attended_kv=step.kv,
               slots_used=len(self.sched.running) + sum(1 for s in in_step if s.finish_reason),
               kv_blocks_used=step.blocks_in_step, waiting=len(self.sched.waiting),
               requests=[s.req.id for s in in_step], domains=[s.req.domain for s in in_step],
               admitted=[s.req.id for s in plan.admitted],
               preempted=[s.req.id for s in plan.preempted],
               finished=[s.req.id for s in in_step if s.finish_reason], drops=drops,
               cost=cost)
    if self.prefix_cache:  # prefix tokens admitted from the cache, and blocks it held
      rec.update(prefix_hit_tokens=len(plan.loads) * self.sched.block_size,
                 kv_blocks_cached=step.blocks_cached)
    r["steps"].append(rec)
    if not self.overlap:
      host_s = time.perf_counter() - step.t_host - wall_step
    r["wall"].append(dict(step=rec["step"], step_s=wall_step, host_s=host_s))
    if on_step is not None:
      on_step(self, rec)

  @staticmethod
  def _ended(seqs, rejected):
    return ({s.req.id for s in seqs if s.finish_reason} |
            {r.id for r, _ in rejected if isinstance(r.id, (int, np.integer))})

  @staticmethod
  def _request_records(seqs, rejected):
    out = []
    for seq in seqs:
      r = seq.req
      if not seq.finish_reason:  # only after a run cut short by `stop_after`
        out.append(dict(id=r.id, status="unfinished", reason=None, domain=r.domain,
                        arrival=r.arrival, output_len=len(seq.outputs)))
        continue
      out.append(dict(
          id=r.id, status="finished", reason=None, domain=r.domain, priority=r.priority,
          arrival=r.arrival, admitted=seq.admitted_at,
          first_token=seq.token_times[0], finish=seq.token_times[-1],
          prompt_len=len(r.prompt), output_len=len(seq.outputs), finish_reason=seq.finish_reason,
          preemptions=seq.preemptions, tokens=seq.outputs, logprobs=seq.logprobs,
          token_times=seq.token_times, drops=seq.drops,
          prompt_logprobs=seq.prompt_logprobs if seq.prompt_logprobs else None))
    for r, reason in rejected:
      rid = int(r.id) if isinstance(r.id, (int, np.integer)) else repr(r.id)
      out.append(dict(id=rid, status="rejected", reason=reason, domain=r.domain,
                      arrival=r.arrival))
    # Rejected ids may be of any type (that can be why they were rejected): those sort last.
    out.sort(key=lambda d: (0, d["id"], d["status"]) if isinstance(d["id"], int)
             else (1, repr(d["id"]), d["status"]))
    return out
