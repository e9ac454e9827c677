"""experiments/probes/trace.py: what the Tracer records for a traced request, checked against the
engine's
own records and against one full forward of the finished sequence.

- one log-prob vector per generated token, normalised, whose argmax is the greedy token and
  whose entry at that token is the engine's logprob;
- routing for every fed position (prompt + generated - 1), [layers, K] experts in [0, E) when
  dropless, and equal to the routing a full forward of the whole sequence records (dropless
  top-k routing of a token depends only on that token's hidden state);
- tracing does not change what is served.
"""
import functools

import jax
import numpy as np

from moe_serve.model import api
from moe_serve.model.transformer import is_moe_layer
from moe_serve.parallel import steps
from moe_serve.serving import run as run_lib
from moe_serve.experiments.probes import trace as trace_lib
from moe_serve.serving.stream.request import Request
from tests.helpers.serving import tiny_serve_cfg


def _setup():
  cfg = tiny_serve_cfg(ignore_eos=True, record_routing=True)
  cfg.serve.buckets.update(decode_rows=(8,), prefill_rows=(2,), chunk_lens=(8,))
  params = steps.make_init_fn(cfg.model)(0)
  engine = run_lib.build_engine(cfg, params=params)
  rng = np.random.default_rng(3)
  reqs = [Request(id=i, prompt=[1] + rng.integers(3, 259, 6 + 5 * i).tolist(), max_new_tokens=7,
                  arrival=0.001 * i, domain="code") for i in range(4)]
  return cfg, params, engine, reqs


def test_tracer_records_match_the_engine_and_a_full_forward():
  cfg, params, engine, reqs = _setup()
  plain = {r["id"]: r for r in engine.run(reqs).requests}
  tracer = trace_lib.Tracer([2])
  traced = {r["id"]: r for r in engine.run(reqs, tracer=tracer).requests}
  assert traced == plain  # tracing changes nothing that is served
  rec = traced[2]
  dists = np.stack(tracer.dists[2])
  assert dists.shape == (len(rec["tokens"]), cfg.model.vocab_size)
  np.testing.assert_allclose(np.exp(dists).sum(-1), 1.0, atol=1e-5)
  assert dists.argmax(-1).tolist() == rec["tokens"]
  np.testing.assert_allclose(dists[np.arange(len(dists)), rec["tokens"]], rec["logprobs"],
                             atol=1e-5)

  m = cfg.model
  fed = len(reqs[2].prompt) + len(rec["tokens"]) - 1
  routing = tracer.routing_array(2, fed)
  num_moe = sum(is_moe_layer(m, i) for i in range(m.num_layers))
  assert routing.shape == (fed, num_moe, m.router.k)
  assert routing.min() >= 0 and routing.max() < m.num_experts  # dropless: nothing is -1
  seq = np.asarray([list(reqs[2].prompt) + rec["tokens"][:-1]])
  _, aux = jax.jit(functools.partial(api.forward, m, record_routing=True))(params, seq)
  full = np.stack([np.asarray(r.expert_index) for r in aux["routing"]], 1)  # [fed, layers, K]
  np.testing.assert_array_equal(routing, full)
