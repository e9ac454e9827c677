"""Routing replay: force chosen requests' recorded routing in a later run, and the per-request
routing files a study exports.

A recorded routing is one int array per request, `[U, Y, K]`: for each position the request fed
through the model (prompt, then outputs fed back), each MoE layer and each routing choice, the code
of model/routing.py (e + 1 = the choice went to expert e and was kept, -(e + 1) = it chose e and was
dropped for capacity). The engine (serve.replay_routing) turns the codes of the requests it is
given into the step's `forced_TxYxK` input, so a replayed request's tokens route exactly as
recorded and claim their slots first; positions past the recording route freely.

Files: `save`/`load` write and read one `.npz` of such arrays keyed by name (e.g.
"solo_1000000", "r3_1000000"); stored as int16 (up to 32766 experts).

Axis letters: U positions of a request, Y MoE layers, K routing choices, T flat step tokens
(parts.FlatOrder).
"""
import numpy as np

from moe_serve import files
from moe_serve.model import parts


def forced_codes(plan, shape, replay, num_moe_layers, k):
  """int32 [T, Y, K] replay codes of one step (0 = free) for the requests of `plan` that
  `replay` ({request id: [U, Y, K] codes}) holds."""
  order = parts.FlatOrder.of_step(*shape)
  out_TxYxK = np.zeros((order.num_tokens, num_moe_layers, k), np.int32)
  if not replay:
    return out_TxYxK
  rows = [(seq, 0, i, 1) for i, seq in enumerate(plan.decode)]
  rows += [(seq, 1, j, n) for j, (seq, n) in enumerate(plan.prefill)]
  for seq, part, row, n in rows:
    codes_UxYxK = replay.get(seq.req.id)
    if codes_UxYxK is None:
      continue
    start = seq.num_computed
    stop = min(start + n, len(codes_UxYxK))
    if stop > start:
      first = order.index(part, row, 0)
      out_TxYxK[first:first + stop - start] = codes_UxYxK[start:stop]
  return out_TxYxK


def save(path, arrays):
  """Writes {name: [U, Y, K] codes} as one compressed .npz (atomically)."""
  with files.atomic_open(path, binary=True) as f:
    np.savez_compressed(f, **{name: np.asarray(a, np.int16) for name, a in arrays.items()})


def load(path):
  """{name: [U, Y, K] int32 codes} from a file written by `save`."""
  with np.load(path) as z:
    return {name: z[name].astype(np.int32) for name in z.files}
