"""The engine's records (serving/loop/engine.py's module docstring lists them): what a finished step
adds to its record and to its requests' records, and the request records at the end of a run.

Every field here is deterministic (virtual time, never wall time): with the cost_model clock a
run's records are the same bytes on every run and in both loops (serve.overlap or not).

Axis letters: B decode rows, P prefill rows, L chunk length (a step's shape is (B, P, L)),
T flat tokens (parts.FlatOrder), K routing choices per token.
"""
import numpy as np

from moe_serve.metrics import routing as routing_metrics
from moe_serve.model import parts
from moe_serve.serving.loop import sampling


def routing_kept(aux):
  """`kept` [T, K] of each MoE layer's Routing in aux, as numpy, or None if not recorded."""
  recs = aux.get("routing")
  return [np.asarray(r.kept) for r in recs] if recs else None


def step_drops(aux, batch, plan):
  """Adds the step's dropped (token, choice) counts to each of its requests; returns the step's
  per MoE layer, or None when the step returned no routing records."""
  kept = routing_kept(aux)
  if kept is None:
    return None
  step_parts = (batch.decode, batch.prefill)
  seg_T = parts.FlatOrder.of(step_parts).flatten([p.segment_ids_BxL for p in step_parts], np)
  per_req = routing_metrics.drops_by_request(kept, seg_T)
  for seq in plan.decode + [s for s, _ in plan.prefill]:
    seq.add_drops(per_req.get(seq.req.id, [0] * len(kept)))
  return [int(x) for x in routing_metrics.drops_per_layer(kept, seg_T)]


def add_prompt_logprobs(logits, plan, shape):
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


def step_record(index, step, now, sched, drops, cost, prefix_cache):
  """The `steps` record of a step (buckets.Step) applied up to virtual time `now` by `sched`
  (its finishes already freed), with its drops and cost features."""
  plan, shape = step.plan, step.shape
  in_step = plan.decode + [s for s, _ in plan.prefill]
  rec = dict(step=index, t=step.start, dt=now - step.start, bucket=list(shape),
             kv_len=step.kv_len, decode=len(plan.decode), prefill_rows=len(plan.prefill),
             prefill_tokens=sum(n for _, n in plan.prefill), attended_kv=step.kv,
             slots_used=len(sched.running) + sum(1 for s in in_step if s.finish_reason),
             kv_blocks_used=step.blocks_in_step, waiting=len(sched.waiting),
             requests=[s.req.id for s in in_step], domains=[s.req.domain for s in in_step],
             admitted=[s.req.id for s in plan.admitted],
             preempted=[s.req.id for s in plan.preempted],
             finished=[s.req.id for s in in_step if s.finish_reason], drops=drops,
             cost=cost)
  if prefix_cache:  # prefix tokens admitted from the cache, and blocks it held
    rec.update(prefix_hit_tokens=len(plan.loads) * sched.block_size,
               kv_blocks_cached=step.blocks_cached)
  return rec


def request_records(seqs, rejected, prefix_cache):
  """One record per request, finished (or unfinished: a run cut short) or rejected, in id order;
  with the prefix cache, vLLM's num_cached_tokens (the first admission's cached prefix) and whose
  steps computed those blocks (forensics)."""
  out = []
  for seq in seqs:
    r = seq.req
    if not seq.finish_reason:  # only after a run cut short by `stop_after`
      rec = dict(id=r.id, status="unfinished", reason=None, domain=r.domain, arrival=r.arrival,
                 output_len=len(seq.outputs))
    else:
      rec = dict(
          id=r.id, status="finished", reason=None, domain=r.domain, priority=r.priority,
          arrival=r.arrival, admitted=seq.admitted_at,
          first_token=seq.token_times[0], finish=seq.token_times[-1],
          prompt_len=len(r.prompt), output_len=len(seq.outputs),
          finish_reason=seq.finish_reason, preemptions=seq.preemptions, tokens=seq.outputs,
          logprobs=seq.logprobs, token_times=seq.token_times, drops=seq.drops,
          prompt_logprobs=seq.prompt_logprobs if seq.prompt_logprobs else None)
    if prefix_cache:
      rec.update(cached_tokens=seq.cached_tokens, cached_from=sorted(set(seq.cached_from or ())))
    out.append(rec)
  for r, reason in rejected:
    rid = int(r.id) if isinstance(r.id, (int, np.integer)) else repr(r.id)
    out.append(dict(id=rid, status="rejected", reason=reason, domain=r.domain,
                    arrival=r.arrival))
  # Rejected ids may be of any type (that can be why they were rejected): those sort last.
  out.sort(key=lambda d: (0, d["id"], d["status"]) if isinstance(d["id"], int)
           else (1, repr(d["id"]), d["status"]))
  return out
