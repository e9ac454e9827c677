"""The MoE FFN layer on a flat token axis T, with segment ids (request id, negative = padding).

router (float32 logits x w_router, + b_router with `router.bias`) -> routing.route (choice +
capacity by scope and priority) -> a dispatch backend (dispatch.py, chosen by
`model.router.dispatch`) running the experts (experts.py). `dispatch.dense_reference` (every expert
on every token, mixed with the kept weights) is the exact reference the backends are tested
against. Sown into the "aux" collection when it is mutable (training, api.forward; a serving step
never asks, so it computes no router losses): lb_loss, z_loss, expert_load, drop_rate; into
"routing" (only when asked): the layer's `Routing` and drop_rate; into "pairs" (a serving step
always asks: the engine's step cost, serving/step_cost.py): kept_pairs, the kept (token, expert)
pairs per expert [E] int32.

Axis letters (docs/design.md section 2): T flat tokens, D model, E experts, K choices per token.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from moe_serve.model import dispatch, dispatch_soft, experts, layers, routing
from moe_serve.model import invariant as invariant_lib

_warned_non_causal = set()


def router_losses(logits_TxE, expert_index_TxK, valid_T, score="softmax"):
  """Switch load-balancing loss E * sum_e f_e * p_e and router z-loss, over real tokens only.

  f_e counts the router's top-k choices before capacity, as in Switch. p_e is the mean router
  probability: the softmax, or for `score="sigmoid"` (router.score) each token's sigmoid scores
  divided by their sum, as DeepSeek-V3's sequence-wise balance loss normalises them. The z-loss
  is the mean squared logsumexp of the logits for either score.
  """
  e = logits_TxE.shape[-1]
  w_T = valid_T.astype(jnp.float32)
  n = jnp.maximum(w_T.sum(), 1.0)
  if score == "sigmoid":
    sig_TxE = jax.nn.sigmoid(logits_TxE)
    probs_TxE = sig_TxE / sig_TxE.sum(-1, keepdims=True)
  else:
    probs_TxE = jax.nn.softmax(logits_TxE, axis=-1)
  chosen_TxE = jax.nn.one_hot(expert_index_TxK, e, dtype=jnp.float32).sum(axis=1)
  frac_E = (chosen_TxE * w_T[:, None]).sum(0) / (n * expert_index_TxK.shape[1])
  prob_E = (probs_TxE * w_T[:, None]).sum(0) / n
  lb_loss = e * jnp.sum(frac_E * prob_E)
  z_loss = jnp.sum(jax.nn.logsumexp(logits_TxE, axis=-1) ** 2 * w_T) / n
  return lb_loss, z_loss, frac_E


def warn_if_non_causal(router_cfg):
  """Logs once per router kind/priority that a decoder with this router is not causal."""
  key = (router_cfg.kind, router_cfg.priority, router_cfg.capacity_scope)
  if routing.is_causal(router_cfg) or key in _warned_non_causal:
    return
  _warned_non_causal.add(key)
  logging.warning(
      "model.router kind=%r priority=%r capacity_scope=%r is not causal: a later token of a step "
      "can change an earlier token's routing, so cached decoding and a full forward can differ "
      "(see docs/routing.md)", *key)


class Experts(nn.Module):
  """The E experts' parameters (applied by the dispatch backends, experts.ffn): w_gate, w_up
  [E, D, F], w_down [E, F, D]; with `model.expert_bias` also b_gate, b_up [E, F] and b_down
  [E, D] (zeros at init). The activation is `model.expert_act`."""
  cfg: "ml_collections.ConfigDict"  # the model section  # noqa: F821

  @nn.compact
  def __call__(self):
    m = self.cfg
    e, d, f = m.num_experts, m.d_model, m.d_ff_expert
    axes_in = ("exp", "embed_moe", "mlp_moe")
    biases = (None, None, None)
    if m.expert_bias:
      zeros = nn.initializers.zeros
      biases = (layers.param_with_axes(self, "b_gate", (e, f), ("exp", "mlp_moe"), zeros),
                layers.param_with_axes(self, "b_up", (e, f), ("exp", "mlp_moe"), zeros),
                layers.param_with_axes(self, "b_down", (e, d), ("exp", "embed_moe"), zeros))
    return experts.from_model(
        m, layers.param_with_axes(self, "w_gate", (e, d, f), axes_in),
        layers.param_with_axes(self, "w_up", (e, d, f), axes_in),
        layers.param_with_axes(self, "w_down", (e, f, d), ("exp", "mlp_moe", "embed_moe")),
        biases)


class MoE(nn.Module):
  """The MoE FFN of one block: router, routing under capacity, dispatch to the experts."""
  cfg: "ml_collections.ConfigDict"  # the model section  # noqa: F821

  @nn.compact
  def __call__(self, x_TxD, segment_ids_T, num_decode=0, token_ids_T=None, record=False,
               row_shapes=None, forced_TxK=None):
    """[T, D] -> [T, D]. `num_decode`: static count of leading decode tokens (their capacity
    factor is capacity_factor_decode); `token_ids_T`: only the hash router uses them;
    `record`: sow this layer's Routing into the "routing" collection; `row_shapes`: the
    (rows, length) of each part when every row holds at most one request and a request at most
    one row (an engine step): lets `sequence` scope size its buffers per row instead of T;
    `forced_TxK`: routing replay codes (routing.py), None = route freely."""
    m, r = self.cfg, self.cfg.router
    warn_if_non_causal(r)  # at trace time, once per process and router setting
    t = x_TxD.shape[0]
    valid_T = segment_ids_T >= 0
    if r.kind == "soft":
      return self._soft(x_TxD, segment_ids_T, record)
    w_router_DxE = layers.param_with_axes(self, "w_router", (m.d_model, m.num_experts),
                                          ("router_embed", "router_exp"))
    router_in_TxD = x_TxD.astype(jnp.float32)
    if r.jitter > 0 and self.has_rng("jitter"):  # training only: serving never passes the rng
      router_in_TxD *= jax.random.uniform(self.make_rng("jitter"), router_in_TxD.shape,
                                          minval=1.0 - r.jitter, maxval=1.0 + r.jitter)
    invariant = m.get("batch_invariant", False)
    logits_TxE = invariant_lib.matmul(router_in_TxD, w_router_DxE, invariant)
    if r.bias:  # gpt-oss: part of the logits (choice, weights and losses all see it)
      logits_TxE = logits_TxE + layers.param_with_axes(
          self, "b_router", (m.num_experts,), ("router_exp",), nn.initializers.zeros)
    selection_bias_E = None
    if r.selection_bias:  # DeepSeek-V3's e_score_correction_bias: choosing only (routing.py)
      selection_bias_E = layers.param_with_axes(
          self, "e_score_bias", (m.num_experts,), ("router_exp",), nn.initializers.zeros)
    rt = routing.route(logits_TxE, segment_ids_T, r, num_decode, token_ids_T, forced_TxK,
                       invariant, selection_bias_E)

    w = Experts(m, name="experts")()
    x = x_TxD.astype(layers.dtype_of(m.dtype))
    capacity = routing.buffer_capacity(r, m.num_experts, t, num_decode, row_shapes)
    y_TxD = dispatch.run(r.dispatch, x, rt, w, capacity, r, num_decode,
                         row_shapes, invariant).astype(x_TxD.dtype)
    if m.shared_expert:
      y_TxD = y_TxD + self._shared(x_TxD)

    aux = self.is_mutable_collection("aux")  # training and forward(); never a serving step
    if aux or record:
      drop_rate = routing.drop_rate(rt, segment_ids_T, r.kind == "expert_choice")
    if aux:
      choice_TxK = rt.expert_index
      if r.kind == "expert_choice":  # its record has K = E: balance the router's own top-k
        choice_TxK = jax.lax.top_k(logits_TxE, r.k)[1]
      lb_loss, z_loss, load_E = router_losses(logits_TxE, choice_TxK, valid_T, r.score)
      self.sow("aux", "lb_loss", lb_loss)
      self.sow("aux", "z_loss", z_loss)
      self.sow("aux", "expert_load", load_E)
      self.sow("aux", "drop_rate", drop_rate)
    if record:
      self.sow("routing", "routing", rt)
      self.sow("routing", "drop_rate", drop_rate)
    if self.is_mutable_collection("pairs"):
      kept_E = routing.kept_per_expert(rt.expert_index, rt.kept, m.num_experts)
      self.sow("pairs", "kept_pairs", kept_E)
    return y_TxD

  def _shared(self, x_TxD):
    """The shared expert every token passes through (width d_ff_shared, or d_ff_expert if 0),
    times sigmoid(x . w_shared_gate) when model.shared_expert_gate is set (Qwen2-MoE)."""
    m = self.cfg
    invariant = m.get("batch_invariant", False)
    y_TxD = layers.SwiGLU(m.d_ff_shared or m.d_ff_expert, m.dtype, invariant,
                          name="shared_expert")(x_TxD)
    if m.shared_expert_gate:
      w_D = layers.param_with_axes(self, "w_shared_gate", (m.d_model,), ("embed",))
      gate_T = jax.nn.sigmoid(invariant_lib.matmul(x_TxD.astype(jnp.float32),
                                                   w_D.astype(jnp.float32), invariant))
      y_TxD = (y_TxD.astype(jnp.float32) * gate_T[:, None]).astype(y_TxD.dtype)
    return y_TxD

  def _soft(self, x_TxD, segment_ids_T, record):
    """Soft MoE (dispatch_soft.py): nothing is dropped and there are no Switch losses, so
    lb_loss, z_loss and drop_rate are sown as zeros (the trainer's sums stay valid)."""
    m, r = self.cfg, self.cfg.router
    phi, scale = dispatch_soft.SoftRouter(m.num_experts, r.k, name="soft_router")(m.d_model)
    w = Experts(m, name="experts")()
    group = x_TxD.shape[0] if r.capacity_scope == "batch" else r.group_size
    x = x_TxD.astype(layers.dtype_of(m.dtype))
    y_TxD, rt = dispatch_soft.soft_moe(x, segment_ids_T, phi, scale, w, max(group, 1))
    y_TxD = y_TxD.astype(x_TxD.dtype)
    if m.shared_expert:
      y_TxD = y_TxD + self._shared(x_TxD)
    zero = jnp.zeros((), jnp.float32)
    for name, value in (("lb_loss", zero), ("z_loss", zero), ("drop_rate", zero),
                        ("expert_load", jnp.full((m.num_experts,), 1.0 / m.num_experts))):
      self.sow("aux", name, value)
    if record:
      self.sow("routing", "routing", rt)
    return y_TxD
