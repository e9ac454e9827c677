r"""The cost of `model.batch_invariant`: engine steps of the serving default with the mode off and on.

  python benchmarks/invariant_cost.py                       # 15 interleaved rounds
  python benchmarks/invariant_cost.py --repeats=30 --append_to=benchmarks/RESULTS.md

The bundled model with configs/serve_default.py's buckets and `sorted` dispatch, dropless
(`none`), and configs/study_default.py's bucket with `gather` (the study's step, routing not
recorded): a busy decode step (every slot decoding, kv_len 128) and a busy mixed step (decode rows
plus full prefill chunks, kv_len max_len). Every (setting, step, mode) gets its own jitted step
and cache; a round calls each once (interleaved, so load on shared cores hits all alike).
Reported: median ms per step, and the median over rounds of (on / off). The step includes what
the engine times with it: sampling and the copy of the tokens to the host.
"""
import statistics

from absl import app, flags
import jax
import numpy as np

from configs import serve_default, study_default
from moe_serve import loading
from moe_serve.model import api, parts
from moe_serve.parallel import steps
from moe_serve.serving.loop import sampling

import common  # benchmarks/common.py (the script's folder is on sys.path)

_REPEATS = flags.DEFINE_integer("repeats", 15, "timed rounds (median reported)")
_APPEND = flags.DEFINE_string("append_to", None, "append the markdown table to this file")


def busy(cfg, prefill, seed=0):
  """(StepBatch, kv_len): every slot decoding at position 100, or (prefill) the bucket's prefill
  rows holding full chunks at position 0 beside the other slots' decode rows."""
  b = cfg.serve.buckets.decode_rows[-1]
  p = cfg.serve.buckets.prefill_rows[-1] if prefill else 0
  c = cfg.serve.buckets.chunk_lens[-1]
  rng = np.random.default_rng(seed)
  vocab = cfg.model.vocab_size
  n_dec = b - p
  seg_B = np.where(np.arange(b) < n_dec, np.arange(b), -1)
  decode = parts.decode_part(rng.integers(3, vocab, b), np.arange(b), np.full(b, 100), seg_B)
  chunks = parts.chunk_part(rng.integers(3, vocab, (p, c)), np.arange(n_dec, b), np.zeros(p),
                            np.full(p, c), np.arange(n_dec, b))
  return parts.StepBatch(decode, chunks), (cfg.model.max_len if prefill else 128)


def engine_step(model_cfg, batch, kv_len):
  """The step, the sampler and the copy of tokens to the host, as the engine times them."""
  fn = steps.make_step_fn(model_cfg)
  b, (p, c) = batch.decode.tokens_BxL.shape[0], batch.prefill.tokens_BxL.shape
  samp = sampling.SamplingBatch.padding(b, p)

  def call(params, cache, batch):
    logits, cache, _ = fn(params, cache, batch, kv_len=kv_len)
    return logits, cache, jax.device_get(sampling.sample(logits["decode"], logits["prefill"],
                                                         samp, model_cfg.batch_invariant))
  return call


def main(argv):
  del argv
  settings = {"serve (sorted)": serve_default.get_config(None),
              "study (gather)": study_default.get_config(None)}
  params, _ = loading.load(settings["serve (sorted)"])
  fns = {}
  for name, cfg in settings.items():
    for step in ("decode", "mixed"):
      batch, kv_len = busy(cfg, step == "mixed")
      for on in (False, True):
        m = cfg.model.copy_and_resolve_references()
        m.router.capacity_scope = "none"
        m.batch_invariant = on
        cache = api.init_cache(m, cfg.serve.max_num_seqs)
        fns[(name, step, on)] = (engine_step(m, batch, kv_len), (params, cache, batch),
                                 lambda args, out: (args[0], out[1], args[2]))
  print(f"timing {len(fns)} steps x {_REPEATS.value} rounds ...", flush=True)
  times = common.interleaved_ms(fns, _REPEATS.value)
  rows = []
  for name, cfg in settings.items():
    for step in ("decode", "mixed"):
      off, on = times[(name, step, False)], times[(name, step, True)]
      batch, kv_len = busy(cfg, step == "mixed")
      shape = (batch.decode.tokens_BxL.shape[0],) + batch.prefill.tokens_BxL.shape
      rows.append([name, step, f"{shape} kv {kv_len}", f"{statistics.median(off):.2f}",
                   f"{statistics.median(on):.2f}",
                   f"{statistics.median(b / a for a, b in zip(off, on)):.2f}x"])
  common.report("Cost of model.batch_invariant",
                f"bundled model, dropless (`none`), busy steps (B, P, L) of the serving and "
                f"study buckets; {_REPEATS.value} interleaved rounds; engine step = model step + "
                "sampler + copy of tokens to the host.",
                ["setting", "step", "shape", "off ms (median)", "on ms (median)",
                 "on / off (median of rounds)"], rows, _APPEND.value)


if __name__ == "__main__":
  app.run(main)
