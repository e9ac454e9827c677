"""Dispatch backends: execute a `Routing` with the experts (experts.py: weights, biases,
activation). All must agree.

- `einsum`: one-hot dispatch/combine tensors [T, E, C] into [E, C, D] expert buffers (GShard
  style). When C >= T (`none`, or `sequence` outside an engine step: no smaller static bound)
  it evaluates every expert on every token and mixes with the kept weights, i.e. the dense
  reference.
- `gather`: each kept pair gets a row (its rank among the expert's kept pairs) of an [E, C, D]
  buffer; the buffer is filled by a gather of token rows and read back by a gather.
- `ragged`: pairs sorted by expert, one `jax.lax.ragged_dot` per weight matrix (dropless).
- `sorted`: kept pairs in fixed blocks, one expert per block, only the blocks in use computed
  (dispatch_sorted.py): work that follows the routed pairs, for any scope.

`runs(backend, sharded, invariant)` says which of them really runs for a configured backend (the
model and the clock's step cost, serving/clock/step_cost.py, both ask it). C is
`routing.buffer_capacity` (static). Sharding: token tensors are constrained to
("activation_tokens", "activation_embed"). With experts split over the mesh (`experts_sharded`)
`einsum` with a capacity and `gather` run grouped (dispatch_grouped.py: per-group buffers
exchanged with the experts by all-to-all); otherwise the flat [E, C, D] buffers are constrained
to ("exp", None, "embed_moe").

Axis letters (docs/design.md section 2): T flat tokens, D model, F expert FFN hidden, E experts,
K choices per token, C capacity (buffer rows per expert), A = T * K (token, choice) pairs,
R = E * C flat buffer rows (+1: an appended zero row).
"""
import jax
import jax.numpy as jnp

from moe_serve.model import dispatch_grouped, dispatch_sorted, experts, layers

BUFFER_AXES = ("exp", None, "embed_moe")
TOKEN_AXES = ("activation_tokens", "activation_embed")


def experts_sharded():
  """Whether the logical `exp` axis is split over devices in the current (trace) context."""
  return layers.logical_axis_size("exp") > 1


BACKENDS = ("einsum", "gather", "ragged", "sorted")


def runs(backend, sharded, invariant=False):
  """The backend that really runs when `model.router.dispatch` is `backend`, with the experts
  split over devices (`sharded`) or not, and `model.batch_invariant` (`invariant`): `sorted`'s
  blocks for every backend under `invariant`; `gather` (by index, over all-to-all) for `sorted`
  on split experts; else `backend` itself (an `einsum` whose capacity covers every token then
  computes the dense reference: same rows)."""
  if backend not in BACKENDS:
    raise ValueError(f"model.router.dispatch={backend!r} is not one of {', '.join(BACKENDS)}")
  if invariant:
    return "sorted"
  if backend == "sorted" and sharded:
    return "gather"
  return backend


def expert_buffers(w, x_ExCxD, loop=None):
  """Applies expert e's FFN (experts.ffn) to buffer row block e: [E, C, D] -> [E, C, D].

  `loop=None` picks: one expert after the other (`lax.map`) on CPU with unsharded experts, where
  XLA's batched matmul is ~1.3-1.5x slower than E plain ones (benchmarks/RESULTS.md); batched
  einsums otherwise, so that SPMD can split the expert axis over the mesh.
  """
  w = experts.cast(w, x_ExCxD.dtype)
  if loop is None:
    loop = jax.default_backend() == "cpu" and not experts_sharded()
  if loop:  # one expert's [C, D] rows against its [D, F], [F, D] matrices, [F] and [D] biases
    return jax.lax.map(lambda a: experts.ffn(a[1], a[0], jnp.matmul), (x_ExCxD, w))
  return experts.ffn(w, x_ExCxD, lambda x, m: jnp.einsum("eci,eio->eco", x, m),
                     bias=lambda b_ExF: b_ExF[:, None, :])


def all_experts(w, x_TxD):
  """Every expert on every token: [T, D] -> [T, E, D]."""
  return experts.ffn(experts.cast(w, x_TxD.dtype), x_TxD,
                     lambda x_TxD, m_ExDxF: jnp.einsum("td,edf->tef", x_TxD, m_ExDxF),
                     lambda h_TxExF, m_ExFxD: jnp.einsum("tef,efd->ted", h_TxExF, m_ExFxD),
                     bias=lambda b_ExF: b_ExF[None])


def combine_dense(routing, num_experts):
  """The kept weights scattered to [T, E] (float32)."""
  one_hot_TxKxE = jax.nn.one_hot(routing.expert_index, num_experts, dtype=jnp.float32)
  return jnp.einsum("tke,tk->te", one_hot_TxKxE, routing.combine_weight)


def dense_reference(x_TxD, routing, w):
  """Every expert evaluated on every token, mixed with the kept weights: the exact reference."""
  combine_TxE = combine_dense(routing, w.num_experts)
  y_TxExD = all_experts(w, x_TxD)
  y_TxD = jnp.einsum("ted,te->td", y_TxExD.astype(jnp.float32), combine_TxE)
  return layers.constrain(y_TxD.astype(x_TxD.dtype), TOKEN_AXES)


def buffer_slots(routing, num_experts):
  """Row of each kept pair in its expert's buffer: its rank among that expert's kept pairs in
  (token, choice) order. [T, K] int32; meaningless where not kept."""
  t, k = routing.expert_index.shape
  one_hot_AxE = jax.nn.one_hot(routing.expert_index.reshape(-1), num_experts, dtype=jnp.int32)
  one_hot_AxE = one_hot_AxE * routing.kept.reshape(-1, 1)
  rank_AxE = jnp.cumsum(one_hot_AxE, axis=0) - 1
  slot_A = jnp.take_along_axis(rank_AxE, routing.expert_index.reshape(-1, 1), axis=1)[:, 0]
  return slot_A.reshape(t, k)


def einsum_dispatch(x_TxD, routing, w, capacity):
  """One-hot dispatch [T, E, C] and combine tensors; `capacity` = buffer rows per expert."""
  e = w.num_experts
  slot_TxK = buffer_slots(routing, e)
  kept_TxK = routing.kept & (slot_TxK < capacity)
  expert_TxKxE = jax.nn.one_hot(routing.expert_index, e, dtype=jnp.float32)
  slot_TxKxC = jax.nn.one_hot(jnp.where(kept_TxK, slot_TxK, capacity), capacity,
                              dtype=jnp.float32)  # not kept -> all-zero row
  dispatch_TxExC = jnp.einsum("tke,tkc->tec", expert_TxKxE, slot_TxKxC)
  combine_TxExC = jnp.einsum("tke,tkc,tk->tec", expert_TxKxE, slot_TxKxC, routing.combine_weight)
  x_ExCxD = jnp.einsum("tec,td->ecd", dispatch_TxExC.astype(x_TxD.dtype), x_TxD)
  x_ExCxD = layers.constrain(x_ExCxD, BUFFER_AXES)
  y_ExCxD = layers.constrain(expert_buffers(w, x_ExCxD), BUFFER_AXES)
  y_TxD = jnp.einsum("tec,ecd->td", combine_TxExC, y_ExCxD.astype(jnp.float32))
  return layers.constrain(y_TxD.astype(x_TxD.dtype), TOKEN_AXES)


def gather_dispatch(x_TxD, routing, w, capacity):
  """Kept pairs fill rows of [E, C, D] buffers by index; outputs are gathered back per pair."""
  t, d = x_TxD.shape
  e = w.num_experts
  slot_TxK = buffer_slots(routing, e)
  kept_TxK = routing.kept & (slot_TxK < capacity)
  # Flat buffer row of each kept pair; dropped pairs point past the end and are not written.
  row_TxK = jnp.where(kept_TxK, routing.expert_index * capacity + slot_TxK, e * capacity)
  tok_TxK = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[:, None], row_TxK.shape)
  # Empty buffer rows read token index t: an appended zero row.
  src_R = jnp.full((e * capacity,), t, jnp.int32).at[row_TxK.reshape(-1)].set(
      tok_TxK.reshape(-1), mode="drop")
  x_padded = jnp.concatenate([x_TxD, jnp.zeros((1, d), x_TxD.dtype)], axis=0)
  x_ExCxD = layers.constrain(x_padded[src_R].reshape(e, capacity, d), BUFFER_AXES)
  y_ExCxD = layers.constrain(expert_buffers(w, x_ExCxD), BUFFER_AXES)
  y_RxD = jnp.concatenate([y_ExCxD.reshape(e * capacity, d), jnp.zeros((1, d), y_ExCxD.dtype)])
  y_TxKxD = y_RxD[row_TxK].astype(jnp.float32)
  weight_TxK = jnp.where(kept_TxK, routing.combine_weight, 0.0)
  y_TxD = jnp.einsum("tkd,tk->td", y_TxKxD, weight_TxK)
  return layers.constrain(y_TxD.astype(x_TxD.dtype), TOKEN_AXES)


def ragged_dispatch(x_TxD, routing, w):
  """Pairs sorted by expert (stable), expert FFNs as ragged matmuls, outputs unsorted and mixed.

  Every pair is computed, so any Routing runs; pairs not kept get weight zero.
  """
  t, k = routing.expert_index.shape
  e = w.num_experts
  w = experts.cast(w, x_TxD.dtype)
  expert_A = routing.expert_index.reshape(-1)
  perm_A = jnp.argsort(expert_A, stable=True)
  sizes_E = jnp.bincount(expert_A, length=e).astype(jnp.int32)
  x_AxD = x_TxD[perm_A // k]
  y_sorted_AxD = experts.ffn(w, x_AxD, lambda x, m: jax.lax.ragged_dot(x, m, sizes_E),
                             bias=lambda b_ExF: b_ExF[expert_A[perm_A]])
  y_AxD = jnp.zeros_like(y_sorted_AxD).at[perm_A].set(y_sorted_AxD)
  y_TxD = jnp.einsum("tkd,tk->td", y_AxD.reshape(t, k, -1).astype(jnp.float32),
                     routing.combine_weight)
  return layers.constrain(y_TxD.astype(x_TxD.dtype), TOKEN_AXES)


def run(backend, x_TxD, routing, w, capacity, router_cfg=None, num_decode=0, row_shapes=None,
        invariant=False):
  """Executes `routing` with `backend` (einsum | gather | ragged | sorted); `capacity` = buffer
  rows (`sorted` and `ragged` need none).

  `router_cfg`, `num_decode` and `row_shapes` (optional) only tighten the per-group buffers of
  the expert-parallel path (dispatch_grouped.group_capacity); results do not depend on them.
  `invariant` (model.batch_invariant): every backend runs its kept pairs in `sorted`'s fixed
  blocks of BLOCK_ROWS rows, the one layout whose row results do not depend on the step (the
  backends compute the same function: the kept pairs' experts, mixed with the kept weights);
  config.validate_mesh refuses it with experts split over the mesh.
  """
  backend = runs(backend, experts_sharded(), invariant)
  x_TxD = layers.constrain(x_TxD, TOKEN_AXES)
  if backend == "sorted":  # invariant: the one layout whose rows do not depend on the step
    y_TxD = dispatch_sorted.sorted_dispatch(x_TxD, routing, w, buffer_slots(
        routing, w.num_experts), invariant=invariant)
    return layers.constrain(y_TxD, TOKEN_AXES)
  if backend == "ragged":
    return ragged_dispatch(x_TxD, routing, w)
  t = x_TxD.shape[0]
  dense = backend == "einsum" and capacity >= t
  groups = dispatch_grouped.num_groups()
  if not dense and groups > 1 and experts_sharded():
    # Experts on other devices: move each group's buffer rows to them by all-to-all.
    group_cap = dispatch_grouped.group_capacity(t, groups, capacity, router_cfg,
                                                w.num_experts, num_decode, row_shapes)
    y_TxD = dispatch_grouped.grouped_dispatch(backend, x_TxD, routing, w, groups, group_cap)
    return layers.constrain(y_TxD, TOKEN_AXES)
  if backend == "gather":
    return gather_dispatch(x_TxD, routing, w, capacity)
  if dense:
    # T rows per expert (dropless, packed `sequence`, or a capacity >= T): every expert sees every
    # token anyway, and the [T, E, T] one-hot tensors would only add work. Sharded experts then
    # finish with an all-reduce of [T, D] over `expert` (nothing to dispatch).
    return dense_reference(x_TxD, routing, w)
  return einsum_dispatch(x_TxD, routing, w, capacity)
