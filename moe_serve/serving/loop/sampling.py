"""Batched token sampling whose result for a row never depends on the other rows.

Row r draws with key fold_in(key(seed_r), position_r), where position is the index the new token
will have in its sequence: the same request at the same position samples the same token whatever
else is in the batch, and a preempted request that recomputes its prefix resamples identically.
The logprob kept is the model's: log_softmax of the raw logits (before temperature and filters).

Axis letters: B decode rows, P prefill rows, L chunk length, R = B + P sampled rows (decode rows
first), V vocabulary.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from moe_serve.model import invariant as invariant_lib


class SamplingBatch(NamedTuple):
  """The sampler's per-row inputs for one step (host-side numpy, filled row by row)."""
  last_P: np.ndarray  # int32: the chunk position whose logits give prefill row p's token
  seeds_R: np.ndarray  # uint32: the request's SamplingParams.seed
  positions_R: np.ndarray  # int32: the index the new token will have in its sequence
  temperature_R: np.ndarray  # float32; 0 is greedy
  top_k_R: np.ndarray  # int32; 0 is off
  top_p_R: np.ndarray  # float32; 1 is off

  @classmethod
  def padding(cls, decode_rows, prefill_rows):
    """B + P greedy rows (seed 0, position 0, last chunk position 0): unused rows stay so."""
    r = decode_rows + prefill_rows
    return cls(np.zeros(prefill_rows, np.int32), np.zeros(r, np.uint32), np.zeros(r, np.int32),
               np.zeros(r, np.float32), np.zeros(r, np.int32), np.ones(r, np.float32))

  def set_row(self, r, params, position):
    """Row `r` samples with `params` (request.SamplingParams) the token at `position`."""
    self.seeds_R[r], self.positions_R[r] = params.seed, position
    self.temperature_R[r], self.top_k_R[r] = params.temperature, params.top_k
    self.top_p_R[r] = params.top_p


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


@functools.partial(jax.jit, static_argnames="invariant")
def sample(decode_BxV, prefill_PxLxV, batch: SamplingBatch, invariant=False):
  """Samples one token per row, R = B + P: decode rows, then each chunk's token `last_P[p]`.

  Returns (tokens [R] int32, logprobs [R] float32). Callers ignore rows they do not need.
  `invariant` (model.batch_invariant): every row is sampled and scored on fixed row tiles
  (model/invariant.py), so a row's log-prob does not depend on R (measured: a greedy row's
  log_softmax over [R, V] changed its last bit between R = 10 and 18).
  """
  pre_PxV = jnp.take_along_axis(prefill_PxLxV, batch.last_P[:, None, None], axis=1)[:, 0]
  logits_RxV = jnp.concatenate([decode_BxV, pre_PxV], axis=0).astype(jnp.float32)
  if invariant:
    def tile(xs):  # [ROW_TILE] rows: tokens as _sample_row draws them, the model's logprob
      logits_RxV, *params = xs
      token_R, _ = jax.vmap(_sample_row)(logits_RxV, *params)
      logprobs_RxV = jax.nn.log_softmax(logits_RxV, axis=-1)
      return token_R, jnp.take_along_axis(logprobs_RxV, token_R[:, None], axis=1)[:, 0]
    return invariant_lib.row_tiled(tile, (
        logits_RxV, batch.seeds_R.astype(jnp.uint32), batch.positions_R, batch.temperature_R,
        batch.top_k_R, batch.top_p_R))

  def sample_rows(logits_RxV):
    return jax.vmap(_sample_row)(logits_RxV, batch.seeds_R.astype(jnp.uint32), batch.positions_R,
                                 batch.temperature_R, batch.top_k_R, batch.top_p_R)

  def greedy_rows(logits_RxV):  # what _sample_row gives a greedy row, without sort or draw
    token_R = jnp.argmax(logits_RxV, axis=-1).astype(jnp.int32)  # ties: lowest id
    logprobs_RxV = jax.nn.log_softmax(logits_RxV, axis=-1)
    return token_R, jnp.take_along_axis(logprobs_RxV, token_R[:, None], axis=1)[:, 0]

  # Every row greedy (the study, benchmarks, padding rows): argmax only. One compiled function
  # holds both branches, so the fast path adds no compile.
  return jax.lax.cond(jnp.all(batch.temperature_R <= 0), greedy_rows, sample_rows, logits_RxV)


@jax.jit
def prompt_logprobs(prefill_PxLxV, targets_PxL):
  """log p(targets_PxL[p, i] | tokens up to chunk position i) [P, L]; target < 0 gives 0."""
  logprobs_PxLxV = jax.nn.log_softmax(prefill_PxLxV.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logprobs_PxLxV, jnp.maximum(targets_PxL, 0)[..., None], axis=-1)
  return jnp.where(targets_PxL >= 0, picked[..., 0], 0.0)
