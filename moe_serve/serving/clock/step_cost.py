"""What a compiled engine step computes, as the `cost_model` clock's features (one dict per step).

A step of shape (B, P, L) reading `kv_len` cache positions computes, whatever its rows hold:
- `decode_rows`: B decode tokens; `prefill_tokens`: P * L chunk tokens (padding included);
- `decode_kv`: B * kv_len and `prefill_kv`: P * L * kv_len query-key pairs of attention;
- `capacity_pairs`: the (token, choice) pairs that capacity routing ranks (sorts by priority and
  counts per expert and instance), T * K per MoE layer with padding, for every scope but
  dropless `none` (which ranks nothing): what makes a `batch` step dearer than a `none` step of
  the same shape and expert rows (measured: about 1 us per pair on the 2-core CPU);
- `expert_rows`: expert FFN rows summed over MoE layers, as the dispatch backend that really runs
  (model/dispatch.runs; a soft router's fixed slots count like `gather`) runs them:
  fixed-shape backends (`gather`, `einsum`) fill E x capacity buffer rows per layer, where the
  capacity follows the scope and capacity factor (routing.buffer_capacity; T for dropless);
  `sorted` runs the blocks its kept pairs fill (each expert's pairs rounded up to whole blocks),
  so its rows follow the routing; `ragged` computes every pair (T * K);
- `a2a_rows`: the expert rows that go to other devices and back by all-to-all when the experts
  are split over the mesh (`mesh.expert` > 1), else 0.
Logged with them, not fitted: `kept_pairs` (kept (token, expert) pairs over MoE layers) and
`busiest_shard_pairs` (per layer, the most kept pairs on one expert-parallel shard, summed over
layers: what sets the pace when routing-dependent work is split over devices).

Axis letters: Y MoE layers, E experts, G expert-parallel shards.
"""
import numpy as np

from moe_serve.model import dispatch, dispatch_sorted, parts, routing, transformer

FEATURES = ("fixed", "decode_rows", "prefill_tokens", "decode_kv", "prefill_kv",
            "capacity_pairs", "expert_rows", "a2a_rows")
LOGGED_ONLY = ("kept_pairs", "busiest_shard_pairs")


class StepCost:
  """Turns a step's shape, kv_len and kept pairs per expert into the features above."""

  def __init__(self, cfg):
    m = cfg.model
    self.router, self.num_experts = m.router, m.num_experts
    self.num_moe_layers = transformer.num_moe_layers(m)
    self.expert_shards = int(cfg.get("mesh", {}).get("expert", 1) or 1)
    # model.batch_invariant is left out: its steps are priced as the configured backend's (a
    # profile made with it on is its own, profiles.model_identity), as they always were.
    self.backend = ("gather" if m.router.kind == "soft"  # fixed-shape slots, no dispatch backend
                    else dispatch.runs(m.router.dispatch, self.expert_shards > 1))

  def expert_rows(self, shape, kept_pairs_YxE):
    b, p, c = shape
    t = b + p * c
    if self.backend == "sorted":
      m = dispatch_sorted.BLOCK_ROWS
      return int((-(-np.asarray(kept_pairs_YxE, np.int64) // m) * m).sum())
    if self.backend == "ragged":
      return self.num_moe_layers * t * self.router.k
    row_shapes = parts.FlatOrder.of_step(b, p, c).row_shapes
    capacity = routing.buffer_capacity(self.router, self.num_experts, t, b, row_shapes)
    return self.num_moe_layers * self.num_experts * min(capacity, t)

  def features(self, shape, kv_len, kept_pairs_YxE):
    """{feature: value} for a step of `shape` (B, P, L) reading `kv_len` positions, whose MoE
    layers kept `kept_pairs_YxE` pairs per expert (an empty array when the step reports none)."""
    b, p, c = shape
    kept_YxE = np.asarray(kept_pairs_YxE, np.int64).reshape(-1, self.num_experts)
    rows = self.expert_rows(shape, kept_YxE)
    shard_YxG = kept_YxE.reshape(len(kept_YxE), self.expert_shards,
                                 self.num_experts // self.expert_shards).sum(-1)
    ranked = 0 if self.router.capacity_scope == "none" or self.router.kind == "soft" else (
        self.num_moe_layers * (b + p * c) * self.router.k)
    return dict(
        fixed=1, decode_rows=b, prefill_tokens=p * c, decode_kv=b * kv_len,
        prefill_kv=p * c * kv_len, capacity_pairs=ranked, expert_rows=rows,
        a2a_rows=rows if self.expert_shards > 1 else 0,
        kept_pairs=int(kept_YxE.sum()),
        busiest_shard_pairs=int(shard_YxG.max(-1).sum()) if kept_YxE.size else 0)
