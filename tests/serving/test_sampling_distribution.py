"""The sampler draws from the right distribution, and (seed, position) pairs get their own keys.

One row of logits is sampled under N seeds at temperature 0.5, with and without top-k/top-p; the
empirical distribution must be within a total-variation bound of softmax(logits / T) restricted
to the filtered tokens (worked out here independently of serving/loop/sampling.py).
"""
import numpy as np
import pytest

from moe_serve.serving.loop import sampling

V = 12  # vocabulary
N = 4000  # seeds (one draw each)
T = 0.5
LOGITS_V = np.random.default_rng(6).normal(size=V).astype(np.float32)
# With N draws over V outcomes, P(TV(empirical, p) >= eps) <= 2**V * exp(-2 * N * eps**2)
# (Bretagnolle-Huber-Carol); eps below makes that 1e-6 for a correct sampler. The seeds are fixed,
# so the test is deterministic; the bound says how unlucky a correct sampler would have to be.
TV_BOUND = np.sqrt((V * np.log(2) + np.log(1e6)) / (2 * N))


def _draw(logits_V, seeds_R, positions_R, temperature, top_k=0, top_p=1.0):
  r = len(seeds_R)
  batch = sampling.SamplingBatch(np.zeros(0, np.int32), np.asarray(seeds_R, np.uint32),
                                 np.asarray(positions_R, np.int32),
                                 np.full(r, temperature, np.float32), np.full(r, top_k, np.int32),
                                 np.full(r, top_p, np.float32))
  logits_RxV = np.tile(np.asarray(logits_V, np.float32), (r, 1))
  toks_R, _ = sampling.sample(logits_RxV, np.zeros((0, 1, len(logits_V)), np.float32), batch)
  return np.asarray(toks_R)


def _target(logits_V, temperature, top_k, top_p):
  """softmax(logits / T) kept to the top-k tokens, then to the smallest run of the most likely of
  those whose probability mass reaches top_p, renormalised (float64)."""
  z_V = np.asarray(logits_V, np.float64) / temperature
  order = np.argsort(-z_V)[:top_k or len(z_V)]
  p_V = np.zeros_like(z_V)
  p_V[order] = np.exp(z_V[order] - z_V.max())
  p_V /= p_V.sum()
  kept, mass = [], 0.0
  for tok in order:
    if mass >= top_p:
      break
    kept.append(tok)
    mass += p_V[tok]
  q_V = np.zeros_like(p_V)
  q_V[kept] = p_V[kept] / p_V[kept].sum()
  return q_V


def _tv(p_V, q_V):
  return 0.5 * np.abs(p_V - q_V).sum()


# (5, 0.6): the nucleus is measured within the top-5 (2 tokens); over all tokens it would be 3.
@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (4, 1.0), (0, 0.65), (5, 0.6)])
def test_draws_follow_the_filtered_tempered_softmax(top_k, top_p):
  want_V = _target(LOGITS_V, T, top_k, top_p)
  # The nucleus must not sit on a knife edge, or float32 rounding could legitimately move it.
  cum = np.cumsum(np.sort(_target(LOGITS_V, T, top_k, 1.0))[::-1])
  assert np.abs(cum - top_p).min() > 0.02 or top_p == 1.0
  toks = _draw(LOGITS_V, np.arange(N), np.full(N, 17), T, top_k, top_p)
  got_V = np.bincount(toks, minlength=V) / N
  assert set(np.flatnonzero(got_V)) <= set(np.flatnonzero(want_V)), "a filtered token was drawn"
  assert _tv(got_V, want_V) < TV_BOUND, (got_V.round(3), want_V.round(3))
  # The bound can tell the temperature applied the wrong way round (logits * T) from the right one.
  assert _tv(want_V, _target(LOGITS_V, 1 / T, top_k, top_p)) > 2 * TV_BOUND


def test_temperature_zero_is_argmax_with_ties_to_the_lowest_id():
  """Greedy rows never draw: a tie for the maximum goes to the lowest id whatever the seed. Every
  row here is greedy (the argmax-only fast path); test_sampling_and_clock.py has greedy rows
  beside sampled ones (the general sampler)."""
  tied_V = np.zeros(V, np.float32)
  tied_V[[2, 7]] = 1.0
  toks = _draw(tied_V, np.arange(200), np.arange(200), 0.0)
  assert set(toks) == {2}


def test_seed_and_position_are_not_interchangeable():
  """Key (s, p + 1) and key (s + 1, p) are different keys: their draws agree only by chance."""
  seeds = np.arange(500)
  positions = 3 + seeds % 50
  uniform_V = np.zeros(V, np.float32)
  a = _draw(uniform_V, seeds, positions + 1, 1.0)
  b = _draw(uniform_V, seeds + 1, positions, 1.0)
  # Independent uniform draws agree with probability 1/V: about 42 of 500 (sd 6); one shared key
  # (e.g. a key built from seed + position) would make all 500 agree.
  assert (a == b).sum() < 100
  assert len(set(a)) == V  # and the draws do vary
