"""Per-token traces of chosen requests: the full next-token distribution at every generated
position and the routing of each of their tokens, for determinism studies and forensics.

Only requests named in `ids` are traced, so the cost is a few rows copied per step. With
`co_routing`, the tracer also keeps the routing of every request in the steps a traced request is
in (who else held an expert's slots when a traced token was dropped).

Routing is kept as replay codes (model/routing.py: e + 1 = kept on expert e, -(e + 1) = chose e,
dropped), so a recording can be replayed (serving/loop/replay.py).

Axis letters: V vocabulary, Y MoE layers, K routing choices per token (routing.Routing), T flat
step tokens (parts.FlatOrder).
"""
from typing import NamedTuple

import numpy as np

from moe_serve.model import parts
from moe_serve.model import routing as routing_lib


def _log_softmax(x_V):
  """log_softmax of one row, computed in float64 and returned as float32."""
  x = np.asarray(x_V, np.float64)
  m = x.max()
  return (x - m - np.log(np.exp(x - m).sum())).astype(np.float32)


class StepRouting(NamedTuple):
  """The routing of every real token of one step: request id [T'] and codes [T', Y, K]."""
  segment_ids: np.ndarray
  codes: np.ndarray


class Tracer:
  """Collects, per traced request id: `dists` (one log-prob vector [V] per generated token, in
  order), `codes` ({position: [Y, K] replay codes}) and `step_of` ({position: engine step
  index}); recomputed positions after a preemption are overwritten with their latest values.
  With `co_routing`, `steps` ({step index: StepRouting}) for the steps a traced request is in.

  With `prefix_cache` (the engine's serve.prefix_cache, cold at the run's start), the positions a
  traced request took from the cache get the codes and step of the request whose step computed
  them (Seq.cached_from): the routing its keys and values carry."""

  def __init__(self, ids, co_routing=False, prefix_cache=False):
    self.ids = set(int(i) for i in ids)
    self.co_routing = co_routing
    self._computed = {} if prefix_cache else None  # every request's {position: (codes, step)}
    self.dists = {i: [] for i in self.ids}
    self.codes = {i: {} for i in self.ids}
    self.step_of = {i: {} for i in self.ids}
    self.steps = {}
    self.num_steps = 0  # engine steps seen (record is called once per step)

  def record(self, logits, aux, plan, shape):
    """Called by the engine after each step, before the sampled tokens are appended."""
    step, self.num_steps = self.num_steps, self.num_steps + 1
    in_step = [s.req.id for s in plan.decode] + [s.req.id for s, _ in plan.prefill]
    if self.ids.isdisjoint(in_step) and self._computed is None:
      return
    order = parts.FlatOrder.of_step(*shape)
    logits = {k: np.asarray(v) for k, v in logits.items()}  # one device->host copy per step
    recs = aux.get("routing") or ()
    codes_TxYxK = None
    if recs:
      codes_TxYxK = np.stack([routing_lib.encode_forced(np.asarray(r.expert_index),
                                                        np.asarray(r.kept)) for r in recs], 1)
    rows = [(seq, [order.index(0, i, 0)], "decode", i) for i, seq in enumerate(plan.decode)]
    rows += [(seq, [order.index(1, j, o) for o in range(n)], "prefill", j)
             for j, (seq, n) in enumerate(plan.prefill)]
    if self._computed is not None and codes_TxYxK is not None:
      for seq, flat, _, _ in rows:
        done = self._computed.setdefault(seq.req.id, {})
        for o, t in enumerate(flat):
          done[seq.num_computed + o] = (codes_TxYxK[t], step)
        if seq.req.id in self.ids:
          self._take_cached(seq)
    for seq, flat, part, row in rows:
      rid = seq.req.id
      if rid not in self.ids:
        continue
      if part == "decode":
        self.dists[rid].append(_log_softmax(logits["decode"][row]))
      elif seq.num_computed + len(flat) == len(seq.tokens):  # the prefill ends: a token is sampled
        self.dists[rid].append(_log_softmax(logits["prefill"][row, len(flat) - 1]))
      for o in range(len(flat)):
        self.step_of[rid][seq.num_computed + o] = step
        if codes_TxYxK is not None:
          self.codes[rid][seq.num_computed + o] = codes_TxYxK[flat[o]]
    if self.co_routing and codes_TxYxK is not None:
      seg_T = np.full(order.num_tokens, -1, np.int64)
      for seq, flat, _, _ in rows:
        seg_T[flat] = seq.req.id
      real = seg_T >= 0
      self.steps[step] = StepRouting(seg_T[real], codes_TxYxK[real])

  def _take_cached(self, seq):
    """The cached positions of traced `seq` (its first admission's blocks), from their owners."""
    rid, owners = seq.req.id, seq.cached_from or ()
    per_block = seq.cached_tokens // len(owners) if owners else 0
    for p in range(per_block * len(owners)):
      if p not in self.codes[rid]:
        self.codes[rid][p], self.step_of[rid][p] = self._computed[owners[p // per_block]][p]

  def codes_array(self, rid, length):
    """[length, Y, K] replay codes of positions 0..length-1 of request `rid`."""
    return np.stack([self.codes[rid][p] for p in range(length)])

  def routing_array(self, rid, length):
    """[length, Y, K] kept expert index of positions 0..length-1 of request `rid`, -1 = dropped."""
    expert, kept = routing_lib.decode_forced(self.codes_array(rid, length))
    return np.where(kept, expert, -1)
