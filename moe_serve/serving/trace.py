"""Per-token traces of chosen requests: the full next-token distribution at every generated
position and the experts each of their tokens was routed to, for determinism studies.

Only requests named in `ids` are traced, so the cost is a few rows copied per step.

Axis letters: V vocabulary, K routing choices per token (routing.Routing), T flat step tokens
(parts.FlatOrder).
"""
import numpy as np

from moe_serve.model import parts


def _log_softmax(x_V):
  """log_softmax of one row, computed in float64 and returned as float32."""
  x = np.asarray(x_V, np.float64)
  m = x.max()
  return (x - m - np.log(np.exp(x - m).sum())).astype(np.float32)


def _kept_experts(routing_records, rows):
  """[len(rows), layers, K] expert index of each kept choice, -1 where dropped (numpy records)."""
  out = []
  for r in routing_records:
    out.append(np.where(r["kept"][rows], r["expert_index"][rows], -1))
  return np.stack(out, 1) if out else np.zeros((len(rows), 0, 0), np.int32)


class Tracer:
  """Collects, per traced request id: `dists` (one log-prob vector [V] per generated token, in
  order) and `routing` ({position: [layers, K] kept expert index or -1}; recomputed positions
  after a preemption are overwritten with their latest routing)."""

  def __init__(self, ids):
    self.ids = set(int(i) for i in ids)
    self.dists = {i: [] for i in self.ids}
    self.routing = {i: {} for i in self.ids}

  def record(self, logits, aux, plan, shape):
    """Called by the engine after each step, before the sampled tokens are appended."""
    in_step = [s.req.id for s in plan.decode] + [s.req.id for s, _ in plan.prefill]
    if self.ids.isdisjoint(in_step):
      return
    order = parts.FlatOrder.of_step(*shape)
    logits = {k: np.asarray(v) for k, v in logits.items()}  # one device->host copy per step
    records = [{"expert_index": np.asarray(r.expert_index), "kept": np.asarray(r.kept)}
               for r in aux.get("routing") or ()]
    for i, seq in enumerate(plan.decode):
      rid = seq.req.id
      if rid not in self.ids:
        continue
      self.dists[rid].append(_log_softmax(logits["decode"][i]))
      if records:
        self.routing[rid][seq.num_computed] = _kept_experts(records, [order.index(0, i, 0)])[0]
    for j, (seq, n) in enumerate(plan.prefill):
      rid = seq.req.id
      if rid not in self.ids:
        continue
      if seq.num_computed + n == len(seq.tokens):  # this chunk ends the prefill: a token is sampled
        self.dists[rid].append(_log_softmax(logits["prefill"][j, n - 1]))
      if records:
        rows = [order.index(1, j, o) for o in range(n)]
        for o, experts in enumerate(_kept_experts(records, rows)):
          self.routing[rid][seq.num_computed + o] = experts

  def routing_array(self, rid, length):
    """[length, layers, K] routing of positions 0..length-1 of request `rid`."""
    return np.stack([self.routing[rid][p] for p in range(length)])
