"""The MoE FFN layer on a flat token axis T, with segment ids (request id, negative = padding).

Current routing: dropless top-k softmax where every expert is evaluated on every token and the
outputs are mixed with the top-k weights (zero elsewhere). This is the exact reference that the
capacity-limited routers and dispatch backends are tested against.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_serve.model import layers


def router_losses(logits_TxE, expert_index_TxK, valid_T):
  """Switch load-balancing loss E * sum_e f_e * p_e and router z-loss, over real tokens only."""
  e = logits_TxE.shape[-1]
  w_T = valid_T.astype(jnp.float32)
  n = jnp.maximum(w_T.sum(), 1.0)
  probs_TxE = jax.nn.softmax(logits_TxE, axis=-1)
  chosen_TxE = jax.nn.one_hot(expert_index_TxK, e, dtype=jnp.float32).sum(axis=1)
  frac_E = (chosen_TxE * w_T[:, None]).sum(0) / (n * expert_index_TxK.shape[1])
  prob_E = (probs_TxE * w_T[:, None]).sum(0) / n
  lb_loss = e * jnp.sum(frac_E * prob_E)
  z_loss = jnp.sum(jax.nn.logsumexp(logits_TxE, axis=-1) ** 2 * w_T) / n
  return lb_loss, z_loss, frac_E


class Experts(nn.Module):
  """E SwiGLU experts applied to every token: [T, D] -> [T, E, D]."""
  num_experts: int
  d_ff: int
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x_TxD):
    d, e, f = x_TxD.shape[-1], self.num_experts, self.d_ff
    dt = layers.dtype_of(self.dtype)
    axes_in = ("exp", "embed_moe", "mlp_moe")
    w_gate_ExDxF = layers.param_with_axes(self, "w_gate", (e, d, f), axes_in)
    w_up_ExDxF = layers.param_with_axes(self, "w_up", (e, d, f), axes_in)
    w_down_ExFxD = layers.param_with_axes(self, "w_down", (e, f, d), ("exp", "mlp_moe", "embed_moe"))
    x = x_TxD.astype(dt)
    gate_TxExF = jnp.einsum("td,edf->tef", x, w_gate_ExDxF.astype(dt))
    up_TxExF = jnp.einsum("td,edf->tef", x, w_up_ExDxF.astype(dt))
    return jnp.einsum("tef,efd->ted", nn.silu(gate_TxExF) * up_TxExF, w_down_ExFxD.astype(dt))


class MoE(nn.Module):
  cfg: "ml_collections.ConfigDict"  # the model section  # noqa: F821

  @nn.compact
  def __call__(self, x_TxD, segment_ids_T):
    m, r = self.cfg, self.cfg.router
    valid_T = segment_ids_T >= 0
    w_router_DxE = layers.param_with_axes(self, "w_router", (m.d_model, m.num_experts),
                                          ("router_embed", "router_exp"))
    logits_TxE = x_TxD.astype(jnp.float32) @ w_router_DxE
    probs_TxE = jax.nn.softmax(logits_TxE, axis=-1)
    weight_TxK, expert_index_TxK = jax.lax.top_k(probs_TxE, r.k)  # ties: lower index first
    if r.renormalize:
      weight_TxK = weight_TxK / weight_TxK.sum(-1, keepdims=True)
    weight_TxK = jnp.where(valid_T[:, None], weight_TxK, 0.0)
    combine_TxE = (jax.nn.one_hot(expert_index_TxK, m.num_experts) * weight_TxK[..., None]).sum(1)

    y_TxExD = Experts(m.num_experts, m.d_ff_expert, m.dtype, name="experts")(x_TxD)
    y_TxD = jnp.einsum("ted,te->td", y_TxExD.astype(jnp.float32), combine_TxE).astype(x_TxD.dtype)
    if m.shared_expert:
      y_TxD = y_TxD + layers.SwiGLU(m.d_ff_expert, m.dtype, name="shared_expert")(x_TxD)

    lb_loss, z_loss, load_E = router_losses(logits_TxE, expert_index_TxK, valid_T)
    self.sow("aux", "lb_loss", lb_loss)
    self.sow("aux", "z_loss", z_loss)
    self.sow("aux", "expert_load", load_E)
    return y_TxD
