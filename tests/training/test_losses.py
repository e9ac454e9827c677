"""Training loss: token NLL, per-domain sums and the total, each against a hand-worked value."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_serve.data import batches
from moe_serve.data.corpus import DOMAINS
from moe_serve.model import api
from moe_serve.parallel import steps
from moe_serve.training import losses


def test_token_nll_is_minus_log_softmax_of_the_target():
  logits_BxLxV = jnp.asarray([[[0.0, 0.0, 0.0, 0.0], [np.log(3.0), 0.0, 0.0, 0.0]]])
  nll_BxL = losses.token_nll(logits_BxLxV.astype(jnp.bfloat16), jnp.asarray([[2, 0]]))
  assert nll_BxL.dtype == jnp.float32
  # uniform over 4 -> log 4; p(0) = 3 / (3 + 1 + 1 + 1) = 1/2 -> log 2 (log 3 rounds in bf16)
  np.testing.assert_allclose(nll_BxL, [[np.log(4.0), np.log(2.0)]], rtol=1e-2)


def test_domain_sums_weight_each_position_and_skip_padding():
  nll_BxL = jnp.asarray([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])
  weights_BxL = jnp.asarray([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]])
  domains_BxL = jnp.asarray([[0, 0, 1], [1, 2, -1]])  # -1: padding, counted nowhere
  nll_sum_K, weight_K = losses.domain_sums(nll_BxL, weights_BxL, domains_BxL)
  want_nll, want_w = np.zeros(len(DOMAINS)), np.zeros(len(DOMAINS))
  want_nll[:3], want_w[:3] = [1.0 + 0.5 * 2.0, 0.0 * 4.0 + 8.0, 16.0], [1.5, 1.0, 1.0]
  np.testing.assert_allclose(nll_sum_K, want_nll)
  np.testing.assert_allclose(weight_K, want_w)


@pytest.fixture(scope="module")
def params():
  """Tiny-model parameters, initialised by one jitted program (faster than op by op)."""
  from configs import base  # pylint: disable=import-outside-toplevel
  m = base.get_config("size=tiny").model
  return steps.make_init_fn(m)(0)


def _batch(vocab_size, seed=0):
  rng = np.random.default_rng(seed)
  tokens_BxL = rng.integers(3, vocab_size, (2, 8)).astype(np.int32)
  targets_BxL = rng.integers(3, vocab_size, (2, 8)).astype(np.int32)
  weights_BxL = np.ones((2, 8), np.float32)
  weights_BxL[0, :3] = 0.0  # a task prompt: inputs, not targets
  weights_BxL[1, 6:] = 0.0  # padding
  segment_ids_BxL = np.asarray([[0] * 8, [1] * 6 + [-1] * 2], np.int32)
  domains_BxL = np.asarray([[0] * 8, [len(DOMAINS) - 1] * 6 + [-1] * 2], np.int32)
  return batches.Batch(tokens_BxL, targets_BxL, weights_BxL, segment_ids_BxL, domains_BxL)


def test_loss_is_weighted_mean_nll_plus_router_losses(tiny_cfg, params):
  m = tiny_cfg.model
  m.router.lb_loss_weight, m.router.z_loss_weight = 0.5, 0.25
  batch = _batch(m.vocab_size)
  total, metrics = jax.jit(functools.partial(losses.loss_fn, m))(params, batch)
  logits_BxLxV, aux = jax.jit(functools.partial(api.forward, m))(params, batch.tokens_BxL,
                                                                 batch.segment_ids_BxL)
  logp_BxLxV = np.asarray(jax.nn.log_softmax(logits_BxLxV, -1))
  nll_BxL = -np.take_along_axis(logp_BxLxV, batch.targets_BxL[..., None], -1)[..., 0]
  w_BxL = batch.weights_BxL
  ce = (nll_BxL * w_BxL).sum() / w_BxL.sum()
  assert float(metrics["ce"]) == pytest.approx(ce, rel=1e-5)
  assert float(aux["lb_loss"]) > 0 and float(aux["z_loss"]) > 0  # both terms are exercised
  want = ce + 0.5 * float(aux["lb_loss"]) + 0.25 * float(aux["z_loss"])
  assert float(total) == pytest.approx(want, rel=1e-5)
  assert float(metrics["loss"]) == float(total)
  # per-domain sums add up to the weighted total that ce averages
  assert float(metrics["domain_nll_sum"].sum()) == pytest.approx((nll_BxL * w_BxL).sum(), rel=1e-5)
  assert float(metrics["domain_weight"][0]) == 5.0 and float(metrics["domain_weight"][-1]) == 6.0


def test_zero_weight_targets_do_not_change_the_loss(tiny_cfg, params):
  m = tiny_cfg.model
  batch = _batch(m.vocab_size)
  targets_BxL = batch.targets_BxL.copy()
  targets_BxL[0, :3] = 3  # weight 0: a prompt position
  targets_BxL[1, 6:] = 4  # weight 0: padding
  loss_fn = jax.jit(functools.partial(losses.loss_fn, m))
  a, _ = loss_fn(params, batch)
  b, _ = loss_fn(params, batch._replace(targets_BxL=targets_BxL))
  assert float(a) == float(b)
