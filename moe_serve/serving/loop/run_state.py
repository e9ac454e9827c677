"""The state of one `Engine.run` in progress: its requests, counters and records.

It changes only in the engine's loops; serve.overlap's planning ahead puts back what planning a
step changed (`snapshot`/`restore`, serving/overlap.plan_ahead).
"""
import dataclasses

import numpy as np


@dataclasses.dataclass
class RunState:
  """The state of the run in progress (`Engine.run`): its requests, counters and records."""
  pending: list  # the accepted requests by (arrival, id)
  rejected: list  # (request, reason)
  stop_ids: set | None  # `run`'s stop_after
  nxt: int = 0  # pending[nxt] is the next to arrive
  seqs: list = dataclasses.field(default_factory=list)  # a Seq per arrived request
  done: int = 0  # requests finished or rejected
  steps: list = dataclasses.field(default_factory=list)  # records
  wall: list = dataclasses.field(default_factory=list)  # records
  misses: int = 0  # steps the overlapped loop launched ahead and dropped
  last_dt: float = 0.0  # the duration of the last step read ...
  last_kept: np.ndarray = dataclasses.field(  # ... and its kept pairs (overlap_lib.guess_dt)
      default_factory=lambda: np.zeros((0, 0), np.int32))

  def stopped(self):
    """Whether every stop_after request has finished or been rejected."""
    if self.stop_ids is None:
      return False
    ended = ({s.req.id for s in self.seqs if s.finish_reason} |
             {r.id for r, _ in self.rejected if isinstance(r.id, (int, np.integer))})
    return self.stop_ids <= ended

  def snapshot(self):
    """What planning a step changes (arrivals taken, requests done), for `restore`."""
    return self.nxt, len(self.seqs), self.done

  def restore(self, snap):
    """Puts back the state `snapshot` returned."""
    self.nxt, num_seqs, self.done = snap
    del self.seqs[num_seqs:]
