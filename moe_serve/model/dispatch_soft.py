"""Soft MoE (Puigcerver et al. 2023, arXiv 2308.00951): slots are softmax mixtures of tokens.

Routing and dispatch are one computation here, so Soft MoE does not go through `route()` or the
backends. Within each scope instance (`batch`: the whole step; `group`: `group_size` consecutive
positions) every expert has `k` slots:

  logits [G, E, P] = normalize(x) @ (scale * normalize(phi))
  slot inputs  [E, P, D] = sum_t softmax_over_tokens(logits)[t, e, p] * x_t   (real tokens only)
  outputs      [G, D]    = sum_{e,p} softmax_over_slots(logits)[t, e, p] * expert_e(slot e, p)

Every slot mixes all tokens of its instance, so a later token changes an earlier token's output:
not causal in a decoder (warned about). Padding takes no part in any slot and gets output zero.
Axis letters as in layers.py; G tokens of an instance, P slots per expert, I instances.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_serve.model import dispatch, layers, routing

_NEG = -1e30  # finite, so an all-padding instance gives uniform (unused) weights, not NaN


def _normalize(x, axis):
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-6)


def soft_moe(x_TxD, segment_ids_T, phi_DxExP, scale, w, group_size):
  """Soft MoE over instances of `group_size` consecutive tokens: ([T, D], Routing record).

  The record has K = E * P columns (expert e's slots at e*P .. e*P+P-1): the combine weights,
  kept = real token.
  """
  t, d = x_TxD.shape
  _, e, p = phi_DxExP.shape
  n_inst = -(-t // group_size)
  pad = n_inst * group_size - t
  x32 = jnp.pad(x_TxD.astype(jnp.float32), ((0, pad), (0, 0)))
  valid_IxG = jnp.pad(segment_ids_T >= 0, (0, pad)).reshape(n_inst, group_size)
  x_IxGxD = x32.reshape(n_inst, group_size, d)
  phi = scale * _normalize(phi_DxExP.astype(jnp.float32), axis=0)
  logits_IxGxExP = jnp.einsum("igd,dep->igep", _normalize(x_IxGxD, axis=-1), phi)
  masked = jnp.where(valid_IxG[..., None, None], logits_IxGxExP, _NEG)
  dispatch_IxGxExP = jax.nn.softmax(masked, axis=1)  # over the instance's tokens
  combine_IxGxEP = jax.nn.softmax(logits_IxGxExP.reshape(n_inst, group_size, e * p), axis=-1)
  slots_IxExPxD = jnp.einsum("igep,igd->iepd", dispatch_IxGxExP, x_IxGxD)
  # Experts see all instances' slots at once: [E, I*P, D] buffers, split over `exp`.
  buf_ExCxD = slots_IxExPxD.transpose(1, 0, 2, 3).reshape(e, n_inst * p, d)
  buf_ExCxD = layers.constrain(buf_ExCxD.astype(x_TxD.dtype), dispatch.BUFFER_AXES)
  y_ExCxD = layers.constrain(dispatch.expert_buffers(w, buf_ExCxD), dispatch.BUFFER_AXES)
  y_IxEPxD = y_ExCxD.reshape(e, n_inst, p, d).transpose(1, 0, 2, 3).reshape(n_inst, e * p, d)
  out_IxGxD = jnp.einsum("igs,isd->igd", combine_IxGxEP, y_IxEPxD.astype(jnp.float32))
  out_TxD = out_IxGxD.reshape(-1, d)[:t] * (segment_ids_T >= 0)[:, None]
  valid_T = segment_ids_T >= 0
  record = routing.Routing(
      jnp.broadcast_to(jnp.repeat(jnp.arange(e, dtype=jnp.int32), p), (t, e * p)),
      combine_IxGxEP.reshape(-1, e * p)[:t] * valid_T[:, None],
      jnp.broadcast_to(valid_T[:, None], (t, e * p)))
  out_TxD = layers.constrain(out_TxD.astype(x_TxD.dtype), dispatch.TOKEN_AXES)
  return out_TxD, record


class SoftRouter(nn.Module):
  """Soft MoE parameters: phi [D, E, P] and the learnable logit scale (init 1)."""
  num_experts: int
  slots: int

  @nn.compact
  def __call__(self, d_model):
    phi = layers.param_with_axes(self, "phi", (d_model, self.num_experts, self.slots),
                                 ("router_embed", "router_exp", None),
                                 nn.initializers.normal(stddev=d_model**-0.5))
    scale = layers.param_with_axes(self, "scale", (), (), nn.initializers.ones)
    return phi, scale
