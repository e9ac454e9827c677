"""Soft MoE (Puigcerver et al. 2023, arXiv 2308.00951): slots are softmax mixtures of tokens.

Routing and dispatch are one computation here, so Soft MoE does not go through `route()` or the
backends. Within each scope instance (`batch`: the whole step; `group`: `group_size` consecutive
positions) every expert has Z = `model.router.k` Soft MoE slots:

  logits [W, E, Z] = normalize(x) @ (scale * normalize(phi))
  slot inputs  [E, Z, D] = sum_t softmax_over_tokens(logits)[t, e, z] * x_t   (real tokens only)
  outputs      [W, D]    = sum_{e,z} softmax_over_slots(logits)[t, e, z] * expert_e(slot e, z)

Every slot mixes all tokens of its instance, so a later token changes an earlier token's output:
not causal in a decoder (warned about). Padding takes no part in any slot and gets output zero.
Axis letters (docs/design.md section 2): T flat tokens, D model, E experts, I scope instances,
W tokens per instance, Z Soft MoE slots per expert, K = E * Z slots of all experts (a token's
"choices" in the Routing record), C = I * Z buffer rows per expert. The Soft MoE "slots" are
expert input rows, not the engine's KV cache slots.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from moe_serve.model import dispatch, layers, routing

_NEG = -1e30  # finite, so an all-padding instance gives uniform (unused) weights, not NaN


def _normalize(x, axis):
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + 1e-6)


def soft_moe(x_TxD, segment_ids_T, phi_DxExZ, scale, w, group_size):
  """Soft MoE over instances of `group_size` consecutive tokens: ([T, D], Routing record).

  The record has K = E * Z columns (expert e's slots at e*Z .. e*Z+Z-1): the combine weights,
  kept = real token.
  """
  t, d = x_TxD.shape
  _, e, z = phi_DxExZ.shape
  n_inst = -(-t // group_size)
  pad = n_inst * group_size - t
  x32 = jnp.pad(x_TxD.astype(jnp.float32), ((0, pad), (0, 0)))
  valid_IxW = jnp.pad(segment_ids_T >= 0, (0, pad)).reshape(n_inst, group_size)
  x_IxWxD = x32.reshape(n_inst, group_size, d)
  phi_DxExZ = scale * _normalize(phi_DxExZ.astype(jnp.float32), axis=0)
  logits_IxWxExZ = jnp.einsum("iwd,dez->iwez", _normalize(x_IxWxD, axis=-1), phi_DxExZ)
  masked_IxWxExZ = jnp.where(valid_IxW[..., None, None], logits_IxWxExZ, _NEG)
  dispatch_IxWxExZ = jax.nn.softmax(masked_IxWxExZ, axis=1)  # over the instance's tokens
  combine_IxWxK = jax.nn.softmax(logits_IxWxExZ.reshape(n_inst, group_size, e * z), axis=-1)
  slots_IxExZxD = jnp.einsum("iwez,iwd->iezd", dispatch_IxWxExZ, x_IxWxD)
  # Experts see all instances' slots at once: [E, I*Z, D] buffers, split over `exp`.
  buf_ExCxD = slots_IxExZxD.transpose(1, 0, 2, 3).reshape(e, n_inst * z, d)
  buf_ExCxD = layers.constrain(buf_ExCxD.astype(x_TxD.dtype), dispatch.BUFFER_AXES)
  y_ExCxD = layers.constrain(dispatch.expert_buffers(w, buf_ExCxD), dispatch.BUFFER_AXES)
  y_IxKxD = y_ExCxD.reshape(e, n_inst, z, d).transpose(1, 0, 2, 3).reshape(n_inst, e * z, d)
  out_IxWxD = jnp.einsum("iwk,ikd->iwd", combine_IxWxK, y_IxKxD.astype(jnp.float32))
  out_TxD = out_IxWxD.reshape(-1, d)[:t] * (segment_ids_T >= 0)[:, None]
  valid_T = segment_ids_T >= 0
  record = routing.Routing(
      jnp.broadcast_to(jnp.repeat(jnp.arange(e, dtype=jnp.int32), z), (t, e * z)),
      combine_IxWxK.reshape(-1, e * z)[:t] * valid_T[:, None],
      jnp.broadcast_to(valid_T[:, None], (t, e * z)))
  out_TxD = layers.constrain(out_TxD.astype(x_TxD.dtype), dispatch.TOKEN_AXES)
  return out_TxD, record


class SoftRouter(nn.Module):
  """Soft MoE parameters: phi [D, E, Z] and the learnable logit scale (init 1)."""
  num_experts: int
  slots: int

  @nn.compact
  def __call__(self, d_model):
    phi = layers.param_with_axes(self, "phi", (d_model, self.num_experts, self.slots),
                                 ("router_embed", "router_exp", None),
                                 nn.initializers.normal(stddev=d_model**-0.5))
    scale = layers.param_with_axes(self, "scale", (), (), nn.initializers.ones)
    return phi, scale
