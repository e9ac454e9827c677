"""Cross-entropy over weighted targets plus the router's load-balancing and z-losses.

Per-domain sums are returned alongside so the loop can log loss per domain without another pass.
"""
import jax
import jax.numpy as jnp

from moe_serve.data.corpus import DOMAINS
from moe_serve.model import api


def token_nll(logits_BxLxV, targets_BxL):
  """-log p(target) per position, in float32."""
  logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]


def domain_sums(nll_BxL, weights_BxL, domains_BxL):
  """(nll sum, weight sum) per domain, each [len(DOMAINS)]."""
  onehot_BxLxK = jax.nn.one_hot(domains_BxL, len(DOMAINS), dtype=jnp.float32)  # -1 -> zeros
  w_BxLxK = onehot_BxLxK * weights_BxL[..., None]
  return jnp.einsum("bl,blk->k", nll_BxL, w_BxLxK), w_BxLxK.sum((0, 1))


def loss_fn(model_cfg, params, batch):
  """(total loss, metrics) of one packed batch (a data.batches.Batch of arrays)."""
  logits_BxLxV, aux = api.forward(model_cfg, params, batch.tokens_BxL, batch.segment_ids_BxL)
  nll_BxL = token_nll(logits_BxLxV, batch.targets_BxL)
  weights_BxL = batch.weights_BxL
  ce = jnp.sum(nll_BxL * weights_BxL) / jnp.maximum(weights_BxL.sum(), 1.0)
  r = model_cfg.router
  total = ce + r.lb_loss_weight * aux["lb_loss"] + r.z_loss_weight * aux["z_loss"]
  nll_sum_K, weight_K = domain_sums(nll_BxL, weights_BxL, batch.domains_BxL)
  metrics = {"loss": total, "ce": ce, "lb_loss": aux["lb_loss"], "z_loss": aux["z_loss"],
             "expert_load": aux["expert_load"], "domain_nll_sum": nll_sum_K,
             "domain_weight": weight_K}
  if "drop_rate" in aux:
    metrics["drop_rate"] = aux["drop_rate"]
  return total, metrics
