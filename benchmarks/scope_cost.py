r"""The compute cost of batch invariance: one engine step of the default study per capacity scope.

  python benchmarks/scope_cost.py          # scopes batch/sequence/none x cf 1.0/1.25/2.0
  python benchmarks/scope_cost.py --repeats=50 --append_to=benchmarks/RESULTS.md

The step is the default study's fixed bucket (configs/study_default.py: 16 decode rows, 2 prefill
rows of 64, the bundled model, `gather` dispatch, routing recorded): 14 requests decoding and 2
prefilling full chunks, as in a busy step. Every (scope, factor) gets its own jitted step and
cache; a round calls each once (interleaved, so load on shared cores hits all alike). Reported:
median ms per step and the median over rounds of (step / `batch` step at the same factor). The
study's own `step wall ms` column times whole runs and moves with the host's load; this is the
controlled measurement. The last columns price the same step with the study's clock profile
(scripts/calibrate.py): how well the `cost_model` clock's scope-to-scope ratio follows the
measured one (issue 17 asks for 10%).
"""
import os
import statistics

from absl import app, flags
import jax
import numpy as np

from configs import study_default
from moe_serve import loading
from moe_serve.model import api, parts, routing
from moe_serve.parallel import steps
from moe_serve.serving.clock import running as clock_lib
from moe_serve.serving.clock import profiles, step_cost
from moe_serve.serving.loop import sampling

import common  # benchmarks/common.py (the script's folder is on sys.path)

_SCOPES = flags.DEFINE_list("scopes", ["batch", "sequence", "none"], "capacity scopes")
_FACTORS = flags.DEFINE_list("factors", ["1.0", "1.25", "2.0"], "capacity factors")
_REPEATS = flags.DEFINE_integer("repeats", 30, "timed rounds (median reported)")
_APPEND = flags.DEFINE_string("append_to", None, "append the markdown table to this file")


def busy_step(cfg, seed=0):
  """The study bucket's shape with every slot busy: B-2 decode rows, 2 full prefill chunks."""
  b, p, c = (cfg.serve.buckets[k][0] for k in ("decode_rows", "prefill_rows", "chunk_lens"))
  rng = np.random.default_rng(seed)
  vocab = cfg.model.vocab_size
  n_dec = b - p  # the prefilling requests hold the last p slots
  seg_B = np.where(np.arange(b) < n_dec, np.arange(b), -1)
  decode = parts.decode_part(rng.integers(3, vocab, b), np.arange(b), np.full(b, 40), seg_B)
  prefill = parts.chunk_part(rng.integers(3, vocab, (p, c)), np.arange(n_dec, b),
                             np.zeros(p), np.full(p, c), np.arange(n_dec, b))
  batch = parts.StepBatch(decode, prefill)
  parts.check_one_request_per_row(batch)
  return batch


def _engine_step(step_fn, shape):
  """The step plus the device work and copies the engine times with it in a study step."""
  b, p, c = shape
  samp = sampling.SamplingBatch.padding(b, p)
  targets = np.zeros((p, c), np.int32)

  def call(params, cache, batch):
    logits, cache, aux = step_fn(params, cache, batch)
    toks = sampling.sample(logits["decode"], logits["prefill"], samp)
    lp = sampling.prompt_logprobs(logits["prefill"], targets)
    return logits, cache, jax.device_get((toks, lp, aux["kept_pairs"],
                                          [r.kept for r in aux["routing"]]))
  return call


def _next_args(args, out):
  return args[0], out[1], args[2]  # the donated cache comes back as the step's second output


def main(argv):
  del argv
  cfg = study_default.get_config(None)
  params, _ = loading.load(cfg)
  batch = busy_step(cfg)
  b = batch.decode.tokens_BxL.shape[0]
  t = batch.decode.tokens_BxL.size + batch.prefill.tokens_BxL.size
  fns, rows_of, predicted_ms = {}, {}, {}
  profile = profiles.resolve(cfg)  # the study's clock profile (clock.profile=auto)
  shape = (b, batch.prefill.tokens_BxL.shape[0], batch.prefill.tokens_BxL.shape[1])
  for f in map(float, _FACTORS.value):
    for scope in _SCOPES.value:
      m = cfg.model.copy_and_resolve_references()
      m.router.update(capacity_scope=scope, capacity_factor_prefill=f, capacity_factor_decode=f)
      shapes = tuple(x.shape for x in (batch.decode.tokens_BxL, batch.prefill.tokens_BxL))
      rows_of[(scope, f)] = routing.buffer_capacity(m.router, m.num_experts, t, b, shapes)
      cache = api.init_cache(m, cfg.serve.max_num_seqs)
      fn = steps.make_step_fn(m, record_routing=True)
      fns[(scope, f)] = (fn, (params, cache, batch), _next_args)
      fns[(scope, f, "engine")] = (_engine_step(fn, shape), (params, api.init_cache(
          m, cfg.serve.max_num_seqs), batch), _next_args)
      c = cfg.copy_and_resolve_references()
      c.model = m
      kept = fn(params, api.init_cache(m, cfg.serve.max_num_seqs), batch)[2]["kept_pairs"]
      predicted_ms[(scope, f)] = 1e3 * float(clock_lib.predict(
          profile.coef, [step_cost.StepCost(c).features(shape, m.max_len, kept)])[0])
  print(f"timing {len(fns)} steps x {_REPEATS.value} rounds ...", flush=True)
  times = common.interleaved_ms(fns, _REPEATS.value)
  header = ["scope", "cf", "buffer rows / expert", "model step ms (median)",
            "vs batch (median of rounds)", "engine step ms (median)", "vs batch",
            "profile: engine step ms", "profile: vs batch", "profile ratio error"]
  rows = []
  ratio = lambda a, z: statistics.median(x / y for x, y in zip(a, z))
  for (scope, f) in predicted_ms:
    ms, eng = times[(scope, f)], times[(scope, f, "engine")]
    pred = predicted_ms[(scope, f)]
    pred_ratio = pred / predicted_ms[("batch", f)]
    eng_ratio = ratio(eng, times[("batch", f, "engine")])
    rows.append([scope, f"{f:g}", str(rows_of[(scope, f)]), f"{statistics.median(ms):.2f}",
                 f"{ratio(ms, times[('batch', f)]):.2f}x", f"{statistics.median(eng):.2f}",
                 f"{eng_ratio:.2f}x", f"{pred:.2f}", f"{pred_ratio:.2f}x",
                 f"{pred_ratio / eng_ratio - 1:+.1%}"])
  common.report("Cost of batch invariance per step",
                f"one busy step of the default study's bucket (T={t} tokens: {b} decode rows, "
                f"{batch.prefill.tokens_BxL.shape} prefill), bundled model, gather dispatch, "
                f"routing recorded; {_REPEATS.value} interleaved rounds. Engine step: the model "
                "step plus what the engine times with it in the study (sampling, prompt "
                "log-probs, the copy of tokens, kept pairs and routing records to the host). "
                f"Profile columns: the study's clock profile {os.path.relpath(profile.path)} "
                "priced on the same step's features; its ratio error is against the engine "
                "step's ratio.",
                header, rows, _APPEND.value)


if __name__ == "__main__":
  app.run(main)
