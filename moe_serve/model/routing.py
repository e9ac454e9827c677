"""Routing: router logits on a flat token axis -> which expert each (token, choice) uses, and whether
it is kept under the expert's capacity. Pure jnp, no parameters; docs/routing.md is the user page.

Tokens are the flat step set `[T]` (decode tokens first, then prefill chunk tokens; see
parts.FlatOrder) with segment ids (request id, negative = padding). Every static token
position has a capacity factor: the first `num_decode` positions `capacity_factor_decode`, the rest
`capacity_factor_prefill`. A scope instance whose positions' factors sum to `factor_sum` gets,
per expert,

    capacity = max(min_capacity, ceil(k * factor_sum / E))

which is docs/design.md's `ceil(capacity_factor * W * k / E)` for an instance of W positions when
the factors are uniform. `batch` and `group` instances are static position ranges (padding
positions count towards factor_sum but never take a slot); a `sequence` instance is one
request's tokens in the step (factor_sum adds its real tokens only, so it is batch invariant).
Factors are handled in integer thousandths so that the ceiling is exact. "Priority" here is the
router's claim order (`model.router.priority`), not a request's priority in the scheduler.

Routing replay (topk/hash routers): `forced_TxK` codes force a recorded routing on chosen tokens,
0 = route freely, e + 1 = choice goes to expert e and is kept, -(e + 1) = it chose e and is dropped
(`encode_forced`). A forced token's kept pairs claim their slots before every free pair of their
(instance, expert), and its dropped pairs take none; its weights are the router's unbiased scores
of the forced experts (renormalised and scaled like top-k's). Replaying a request's own recorded
routing with the same inputs therefore reproduces its computation whatever else shares the step,
as long as its forced kept pairs fit the expert's capacity (they did when recorded under the same
scope).

Axis letters (docs/design.md section 2): T flat tokens, E experts, K choices per token, I scope
instances, A elements ranked together (the T * K (token, choice) pairs, or T * E for expert
choice), O expert groups of a group-limited router (`router.expert_groups`).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from moe_serve.model import invariant as invariant_lib

MILLI = 1000  # capacity factors are exact multiples of 1/MILLI (checked in config.py)


class Routing(NamedTuple):
  """Where each (token, choice) goes. K is `k` for topk/hash routers and E for expert choice."""
  expert_index: jnp.ndarray  # int32 [T, K]
  combine_weight: jnp.ndarray  # float32 [T, K], zero where not kept
  kept: jnp.ndarray  # bool [T, K]; False = dropped for capacity, or padding


def encode_forced(expert_index, kept):
  """Replay codes (module docstring) from expert ids and keep flags of the same shape (numpy)."""
  e1 = np.asarray(expert_index).astype(np.int32) + 1
  return np.where(np.asarray(kept, bool), e1, -e1).astype(np.int32)


def decode_forced(code):
  """(expert ids, kept) of replay codes; a 0 (free) code decodes to expert -1, not kept."""
  code = np.asarray(code)
  return np.abs(code).astype(np.int32) - 1, code > 0


def factor_milli(value):
  """A capacity factor in integer thousandths."""
  return int(round(value * MILLI))


def capacity(k, num_experts, factor_sum_milli, min_capacity):
  """`max(min_capacity, ceil(k * factor_sum / E))` with factor_sum in thousandths; numpy or jnp
  integers."""
  xp = jnp if isinstance(factor_sum_milli, jax.Array) else np
  return xp.maximum(min_capacity, -((-k * factor_sum_milli) // (num_experts * MILLI)))


def position_factors_milli(cfg, num_tokens, num_decode):
  """Static per-position capacity factors [T] (int thousandths): decode rows first."""
  f_T = np.full((num_tokens,), factor_milli(cfg.capacity_factor_prefill), np.int64)
  f_T[:num_decode] = factor_milli(cfg.capacity_factor_decode)
  return f_T


def instance_capacities(cfg, num_experts, num_tokens, num_decode, row_shapes=None):
  """Static (instance id [T], per-expert capacity [I], instance size [I]).

  `batch`/`group`: the scope's instances. `sequence` (needs `row_shapes`, the (rows, length) of
  each part in token order, where every row holds at most one request and a request at most one
  row, as in an engine step): one instance per row, with the capacity a request filling the
  whole row would get; a request's real capacity is never more, nor its size.
  """
  if cfg.capacity_scope == "sequence":
    if row_shapes is None:
      raise ValueError("capacity_scope='sequence' has static instances only per row: pass "
                       "row_shapes")
    sizes_I = np.concatenate([np.full(n, length, np.int64) for n, length in row_shapes] +
                             [np.zeros(0, np.int64)])
    if sizes_I.sum() != num_tokens:
      raise ValueError(f"row_shapes {row_shapes} hold {sizes_I.sum()} tokens, not {num_tokens}")
    inst_T = np.repeat(np.arange(len(sizes_I)), sizes_I)
  else:
    size = num_tokens if cfg.capacity_scope == "batch" else cfg.group_size
    inst_T = np.arange(num_tokens) // max(size, 1)
    num_inst = int(inst_T[-1]) + 1 if num_tokens else 0
    sizes_I = np.bincount(inst_T, minlength=num_inst)
  f_T = position_factors_milli(cfg, num_tokens, num_decode)
  sums_I = np.zeros(len(sizes_I), np.int64)
  nonempty_I = sizes_I > 0  # reduceat needs increasing starts; an empty instance sums to 0
  starts_I = np.cumsum(sizes_I) - sizes_I
  if num_tokens:
    sums_I[nonempty_I] = np.add.reduceat(f_T, starts_I[nonempty_I])
  return inst_T, capacity(cfg.k, num_experts, sums_I, cfg.min_capacity), sizes_I


def has_static_bound(cfg, row_shapes=None):
  """Whether some expert buffer smaller than T rows can never overflow (see buffer_capacity)."""
  scope = cfg.capacity_scope
  return scope in ("batch", "group") or (scope == "sequence" and row_shapes is not None)


def buffer_capacity(cfg, num_experts, num_tokens, num_decode=0, row_shapes=None):
  """Static rows per expert that a dispatch buffer needs: the most pairs one expert can keep.

  An expert takes at most one pair per token, so no instance gives it more than its size.
  `none` is dropless, so it is bounded by T. `sequence` capacities are data dependent: with
  `row_shapes` (one request per row, see instance_capacities) each row is bounded by the
  capacity of a request filling it, else by T.
  """
  if num_tokens == 0 or not has_static_bound(cfg, row_shapes):
    return num_tokens
  _, cap_I, sizes_I = instance_capacities(cfg, num_experts, num_tokens, num_decode, row_shapes)
  return int(np.minimum(cap_I, sizes_I).sum())


def _rank_within(group_keys, order_keys):
  """Rank of each element among those with equal `group_keys`, ordered by `order_keys`.

  Both are tuples of [A] arrays, most significant first; the order keys must make the order
  within a group total (ties impossible), which every caller ensures with a token index.
  """
  n = group_keys[0].shape[0]
  perm_A = jnp.lexsort(tuple(reversed(order_keys)) + tuple(reversed(group_keys)))
  idx_A = jnp.arange(n, dtype=jnp.int32)
  new_A = jnp.zeros((n,), bool).at[0].set(True)
  for key_A in group_keys:
    sorted_A = key_A[perm_A]
    new_A = new_A | jnp.concatenate([jnp.ones((1,), bool), sorted_A[1:] != sorted_A[:-1]])
  first_A = jax.lax.cummax(jnp.where(new_A, idx_A, 0))
  return jnp.zeros((n,), jnp.int32).at[perm_A].set(idx_A - first_A)


def _segment_factor_sum(segment_ids_T, f_T):
  """For each token, the sum of the factors of all tokens with its segment id (sort based)."""
  n = segment_ids_T.shape[0]
  perm = jnp.argsort(segment_ids_T, stable=True)
  seg, val = segment_ids_T[perm], f_T[perm]
  idx = jnp.arange(n, dtype=jnp.int32)
  start = jnp.concatenate([jnp.ones((1,), bool), seg[1:] != seg[:-1]])
  end = jnp.concatenate([seg[1:] != seg[:-1], jnp.ones((1,), bool)])
  first = jax.lax.cummax(jnp.where(start, idx, 0))
  last = jax.lax.cummin(jnp.where(end, idx, n - 1), reverse=True)
  csum = jnp.cumsum(val)
  total = csum[last] - csum[first] + val[first]
  return jnp.zeros((n,), f_T.dtype).at[perm].set(total)


def _instances_and_capacity(cfg, num_experts, segment_ids_T, num_decode):
  """(instance id [T], per-expert capacity of each token's instance [T]) for a capped scope."""
  t = segment_ids_T.shape[0]
  if cfg.capacity_scope == "sequence":
    f_T = jnp.asarray(position_factors_milli(cfg, t, num_decode), jnp.int32)
    f_T = jnp.where(segment_ids_T >= 0, f_T, 0)
    return segment_ids_T, capacity(cfg.k, num_experts, _segment_factor_sum(segment_ids_T, f_T),
                                   cfg.min_capacity)
  inst_T, cap_I, _ = instance_capacities(cfg, num_experts, t, num_decode)
  return jnp.asarray(inst_T, jnp.int32), jnp.asarray(cap_I[inst_T], jnp.int32)


def _hash_experts(token_ids_T, k, num_experts):
  """k distinct experts per token id: a multiplicative hash, then the next k-1 experts."""
  if token_ids_T is None:
    raise ValueError("model.router.kind='hash' needs the token ids; pass token_ids_T to route()")
  h_T = (jnp.asarray(token_ids_T).astype(jnp.uint32) * jnp.uint32(2654435761)) >> 16
  first_T = (h_T % num_experts).astype(jnp.int32)
  return (first_T[:, None] + jnp.arange(k, dtype=jnp.int32)) % num_experts


def scores(logits_TxE, cfg):
  """The router's scores [T, E] float32: softmax over experts (`router.score="softmax"`) or a
  sigmoid per expert ("sigmoid", DeepSeek-V3), of the float32 logits (which include b_router)."""
  logits_TxE = logits_TxE.astype(jnp.float32)
  if cfg.score == "sigmoid":
    return jax.nn.sigmoid(logits_TxE)
  return jax.nn.softmax(logits_TxE, axis=-1)


def _select(scores_TxE, cfg, selection_bias_E):
  """Top-k expert ids [T, K] by the selection scores: `scores_TxE` plus the selection bias, and
  with `expert_groups` > `topk_groups` only among the experts of each token's `topk_groups` best
  groups (a group's score: the sum of its two best selection scores, `top2_sum`, DeepSeek-V3; or
  its best, `max`, DeepSeek-V2's group_limited_greedy). Ties: lower index first."""
  choice_TxE = scores_TxE if selection_bias_E is None else (
      scores_TxE + selection_bias_E.astype(jnp.float32))
  g = cfg.expert_groups
  if cfg.topk_groups < g:
    t, e = choice_TxE.shape
    grouped_TxOxE = choice_TxE.reshape(t, g, e // g)  # last axis: the E / O experts of a group
    if cfg.group_score == "top2_sum":
      group_TxO = jax.lax.top_k(grouped_TxOxE, 2)[0].sum(-1)
    else:
      group_TxO = grouped_TxOxE.max(-1)
    # A group's rank among the token's groups, best first (ties: lower index first, as top_k).
    rank_TxO = jnp.argsort(jnp.argsort(-group_TxO, axis=-1, stable=True), axis=-1)
    allowed_TxO = rank_TxO < cfg.topk_groups
    choice_TxE = jnp.where(jnp.repeat(allowed_TxO, e // g, axis=1), choice_TxE, -jnp.inf)
  return jax.lax.top_k(choice_TxE, cfg.k)[1]


def _choose(logits_TxE, cfg, token_ids_T, forced_T=None, forced_index_TxK=None,
            invariant=False, selection_bias_E=None):
  """Experts and weights before capacity, and each token's `score` priority: [T, K], [T, K], [T].

  Top-k routers choose by the selection scores (`_select`); hash routers by the token id. A
  choice's weight is the router's unbiased score of that expert (`scores`), renormalised over the
  k with `router.renormalize` (a sigmoid's sum gets + 1e-20, as DeepSeek-V3), times
  `router.scale`. The priority is the token's best unbiased score among its chosen experts,
  before renormalisation and scale (hash routers: its best over every expert; docs/routing.md).
  Tokens with `forced_T` take the experts `forced_index_TxK` instead, with this router's weights
  for them. `invariant` (model.batch_invariant): on fixed row tiles, so that no reduction here
  has a shape that follows the step."""
  if invariant:
    args = (logits_TxE, token_ids_T, forced_T, forced_index_TxK)
    given = tuple(a for a in args if a is not None)

    def tile(xs):
      it = iter(xs)
      logits, *rest = [None if a is None else next(it) for a in args]
      return _choose(logits, cfg, *rest, selection_bias_E=selection_bias_E)

    return invariant_lib.row_tiled(tile, given)
  probs_TxE = scores(logits_TxE, cfg)
  if cfg.kind == "hash":
    index_TxK = _hash_experts(token_ids_T, cfg.k, logits_TxE.shape[-1])
    weight_TxK = jnp.take_along_axis(probs_TxE, index_TxK, axis=1)
    top1_T = probs_TxE.max(axis=-1)
  elif selection_bias_E is None and cfg.topk_groups == cfg.expert_groups:
    weight_TxK, index_TxK = jax.lax.top_k(probs_TxE, cfg.k)  # ties: lower expert index first
    top1_T = weight_TxK[:, 0]
  else:
    index_TxK = _select(probs_TxE, cfg, selection_bias_E)
    weight_TxK = jnp.take_along_axis(probs_TxE, index_TxK, axis=1)
    top1_T = weight_TxK.max(axis=-1)
  if forced_T is not None:
    index_TxK = jnp.where(forced_T[:, None], forced_index_TxK, index_TxK)
    weight_TxK = jnp.where(forced_T[:, None],
                           jnp.take_along_axis(probs_TxE, index_TxK, axis=1), weight_TxK)
  if cfg.renormalize:
    total_T = weight_TxK.sum(-1, keepdims=True)
    weight_TxK = weight_TxK / (total_T + 1e-20 if cfg.score == "sigmoid" else total_T)
  if cfg.scale != 1.0:
    weight_TxK = weight_TxK * jnp.float32(cfg.scale)
  return index_TxK.astype(jnp.int32), weight_TxK, top1_T


def _priority_order(cfg, index_TxK, top1_T):
  """Order keys [T, K] (most significant first) in which pairs claim slots; see docs/routing.md."""
  t, k = index_TxK.shape
  tok_TxK = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[:, None], (t, k))
  choice_TxK = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32)[None, :], (t, k))
  if cfg.priority == "token":
    return (tok_TxK, choice_TxK)
  if cfg.priority == "position":
    return (choice_TxK, tok_TxK)
  # score: choice-major over tokens sorted by their priority score (_choose), descending (stable:
  # token order)
  rank_T = jnp.zeros((t,), jnp.int32).at[jnp.argsort(-top1_T, stable=True)].set(
      jnp.arange(t, dtype=jnp.int32))
  return (choice_TxK, jnp.broadcast_to(rank_T[:, None], (t, k)))


def _route_topk(logits_TxE, segment_ids_T, cfg, num_decode, token_ids_T, forced_TxK=None,
                invariant=False, selection_bias_E=None):
  forced_T = forced_kept_TxK = forced_index_TxK = None
  if forced_TxK is not None:
    forced_TxK = jnp.asarray(forced_TxK, jnp.int32)
    forced_T = (forced_TxK != 0).any(-1)
    forced_index_TxK, forced_kept_TxK = jnp.abs(forced_TxK) - 1, forced_TxK > 0
  index_TxK, weight_TxK, top1_T = _choose(logits_TxE, cfg, token_ids_T, forced_T,
                                          forced_index_TxK, invariant, selection_bias_E)
  valid_TxK = jnp.broadcast_to((segment_ids_T >= 0)[:, None], index_TxK.shape)
  if cfg.capacity_scope == "none":
    kept_TxK = valid_TxK
  else:
    inst_T, cap_T = _instances_and_capacity(cfg, logits_TxE.shape[-1], segment_ids_T, num_decode)
    inst_TxK = jnp.broadcast_to(inst_T[:, None], index_TxK.shape)
    # Padding sorts after every real pair of its (instance, expert), so it never takes a slot.
    order = (~valid_TxK,) + _priority_order(cfg, index_TxK, top1_T)
    if forced_T is not None:  # forced dropped pairs take no slot, forced kept ones claim first
      order = (~valid_TxK | (forced_T[:, None] & ~forced_kept_TxK), ~forced_kept_TxK) + order[1:]
    flat = lambda a: a.reshape(-1)
    rank_TxK = _rank_within((flat(inst_TxK), flat(index_TxK)),
                            tuple(flat(o) for o in order)).reshape(index_TxK.shape)
    kept_TxK = valid_TxK & (rank_TxK < cap_T[:, None])
  if forced_T is not None:
    kept_TxK = jnp.where(forced_T[:, None], valid_TxK & forced_kept_TxK, kept_TxK)
  return Routing(index_TxK, jnp.where(kept_TxK, weight_TxK, 0.0), kept_TxK)


def _route_expert_choice(logits_TxE, segment_ids_T, cfg, num_decode):
  """Each expert takes the `capacity` most probable tokens of each scope instance; K = E. Weights:
  the softmax probabilities times `router.scale`."""
  t, e = logits_TxE.shape
  probs_TxE = jax.nn.softmax(logits_TxE.astype(jnp.float32), axis=-1)
  valid_TxE = jnp.broadcast_to((segment_ids_T >= 0)[:, None], (t, e))
  inst_T, cap_T = _instances_and_capacity(cfg, e, segment_ids_T, num_decode)
  expert_TxE = jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32), (t, e))
  tok_TxE = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[:, None], (t, e))
  flat = lambda a: a.reshape(-1)
  rank_TxE = _rank_within(
      (flat(jnp.broadcast_to(inst_T[:, None], (t, e))), flat(expert_TxE)),
      (flat(~valid_TxE), flat(-probs_TxE), flat(tok_TxE))).reshape(t, e)
  kept_TxE = valid_TxE & (rank_TxE < cap_T[:, None])
  weight_TxE = probs_TxE if cfg.scale == 1.0 else probs_TxE * jnp.float32(cfg.scale)
  return Routing(expert_TxE, jnp.where(kept_TxE, weight_TxE, 0.0), kept_TxE)


def route(logits_TxE, segment_ids_T, cfg, num_decode=0, token_ids_T=None, forced_TxK=None,
          invariant=False, selection_bias_E=None):
  """Routes a flat token set. Returns a `Routing`.

  Args:
    logits_TxE: router logits (computed in float32).
    segment_ids_T: int32 request ids; negative = padding (never kept, never takes a slot).
    cfg: the `model.router` ConfigDict (validated by config.validate_router).
    num_decode: static count of leading decode positions (they use capacity_factor_decode).
    token_ids_T: int32 token ids, needed only by the `hash` router.
    forced_TxK: replay codes (module docstring), topk/hash routers only; None = none forced.
    invariant: model.batch_invariant (a topk/hash token's choice and weights on fixed row
      tiles; model/invariant.py).
    selection_bias_E: float32 [E], added to the scores to choose the experts only (the weights
      stay the unbiased scores); required with `router.selection_bias`, else ignored.
  """
  segment_ids_T = jnp.asarray(segment_ids_T, jnp.int32)
  if cfg.selection_bias and selection_bias_E is None:
    raise ValueError("model.router.selection_bias=True needs the bias: pass selection_bias_E "
                     "(the MoE layer's e_score_bias parameter)")
  if not cfg.selection_bias:
    selection_bias_E = None
  if cfg.kind == "expert_choice":
    if forced_TxK is not None:
      raise ValueError("routing replay (forced_TxK) needs a topk or hash router")
    return _route_expert_choice(logits_TxE, segment_ids_T, cfg, num_decode)
  if cfg.kind in ("topk", "hash"):
    return _route_topk(logits_TxE, segment_ids_T, cfg, num_decode, token_ids_T, forced_TxK,
                       invariant, selection_bias_E)
  raise ValueError(f"model.router.kind={cfg.kind!r} has no routing here; use topk, hash or "
                   "expert_choice (soft goes through dispatch_soft.soft_moe)")


def kept_per_expert(expert_index_TxK, kept_TxK, num_experts):
  """Kept (token, expert) pairs per expert [E] int32 (a Routing's fields; padding is never
  kept)."""
  return jnp.zeros((num_experts,), jnp.int32).at[expert_index_TxK.reshape(-1)].add(
      kept_TxK.reshape(-1).astype(jnp.int32))


def drop_rate(routing, segment_ids_T, expert_choice=False):
  """Fraction of real (token, choice) pairs not kept; for expert choice (K = E), the fraction of
  real tokens that no expert took."""
  valid_T = jnp.asarray(segment_ids_T) >= 0
  n = jnp.maximum(valid_T.sum(), 1).astype(jnp.float32)
  if expert_choice:
    return jnp.sum(valid_T & ~routing.kept.any(1)) / n
  return 1.0 - routing.kept.sum() / (n * routing.kept.shape[1])


def is_causal(cfg):
  """Whether a later token can never change an earlier token's routing within one step."""
  if cfg.kind in ("expert_choice", "soft"):
    return False
  return cfg.capacity_scope == "none" or cfg.priority == "token"

