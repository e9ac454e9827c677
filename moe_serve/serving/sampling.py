"""Batched token sampling whose result for a row never depends on the other rows.

Row r draws with key fold_in(key(seed_r), position_r), where position is the index the new token
will have in its sequence: the same request at the same position samples the same token whatever
else is in the batch, and a preempted request that recomputes its prefix resamples identically.
The logprob kept is the model's: log_softmax of the raw logits (before temperature and filters).
"""

import jax
import jax.numpy as jnp


def _sample_row(logits_V, seed, position, temperature, top_k, top_p):
  v = logits_V.shape[0]
  logprobs_V = jax.nn.log_softmax(logits_V)
  greedy = jnp.argmax(logits_V)  # ties: lowest id
  scaled_V = logits_V / jnp.maximum(temperature, 1e-6)
  desc_V = jnp.sort(scaled_V)[::-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  keep_V = scaled_V >= desc_V[k - 1]  # ties at the k-th value are all kept
  # Nucleus: the smallest prefix of the (top-k filtered) sorted probs whose mass reaches top_p.
  probs_desc_V = jax.nn.softmax(jnp.where(jnp.arange(v) < k, desc_V, -jnp.inf))
  before_V = jnp.cumsum(probs_desc_V) - probs_desc_V
  n_keep = jnp.maximum(jnp.sum(before_V < top_p), 1)
  keep_V &= scaled_V >= desc_V[n_keep - 1]
  key = jax.random.fold_in(jax.random.key(seed), position)
  sampled = jax.random.categorical(key, jnp.where(keep_V, scaled_V, -jnp.inf))
  token = jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)
  return token, logprobs_V[token]


@jax.jit
def sample(decode_BxV, prefill_PxCxV, last_P, seeds_R, positions_R, temperature_R, top_k_R,
           top_p_R):
  """Samples one token per row, R = B + P: decode rows, then each chunk's token `last_P[p]`.

  Returns (tokens [R] int32, logprobs [R] float32). Callers ignore rows they do not need.
  """
  pre_PxV = jnp.take_along_axis(prefill_PxCxV, last_P[:, None, None], axis=1)[:, 0]
  logits_RxV = jnp.concatenate([decode_BxV, pre_PxV], axis=0).astype(jnp.float32)
  return jax.vmap(_sample_row)(logits_RxV, seeds_R.astype(jnp.uint32), positions_R,
                               temperature_R, top_k_R, top_p_R)


@jax.jit
def prompt_logprobs(prefill_PxCxV, targets_PxC):
  """log p(targets_PxC[p, i] | tokens up to chunk position i) [P, C]; target < 0 gives 0."""
  logprobs_PxCxV = jax.nn.log_softmax(prefill_PxCxV.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logprobs_PxCxV, jnp.maximum(targets_PxC, 0)[..., None], axis=-1)
  return jnp.where(targets_PxC >= 0, picked[..., 0], 0.0)
