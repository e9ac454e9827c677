"""End-to-end demo: build the model, prefill a batch of prompts with the cache, decode greedily.

Reports parameter counts, the generated text and prefill/decode tokens per second. It goes
through the same jitted engine step that serving uses (parallel/steps.py).
"""
import time

import jax
import numpy as np

from moe_serve.data import tokenizer
from moe_serve.model import api, parts
from moe_serve.parallel import steps

DEMO_PROMPTS = ("12+34=", "reverse: moe_serve", "def add(a, b):", "The experts ", "sort: dcba")


def run(cfg, log=print, mesh=None):
  """Runs the demo (sharded over `mesh` if given); returns a dict of the figures it printed."""
  m = cfg.model
  n = min(cfg.generate.num_prompts, len(DEMO_PROMPTS))
  data = 1 if mesh is None else mesh.shape["data"]
  rows = -(-n // data) * data  # slots and step rows, padded with idle rows to fill `data`
  prompts = [tokenizer.encode(p) for p in DEMO_PROMPTS[:n]]
  if max(len(p) for p in prompts) + cfg.generate.max_new_tokens > m.max_len:
    raise ValueError(f"prompt + generate.max_new_tokens={cfg.generate.max_new_tokens} exceeds "
                     f"model.max_len={m.max_len}")
  if mesh is None:
    params = api.init_params(m, jax.random.key(cfg.seed))
    step, new_cache = steps.make_step_fn(m), lambda: api.init_cache(m, rows)
  else:
    rules = cfg.logical_axis_rules
    params = steps.make_init_fn(m, mesh, rules)(cfg.seed)
    step = steps.make_step_fn(m, mesh, rules)
    make_cache = steps.make_cache_fn(m, mesh, rules)
    new_cache = lambda: make_cache(rows)
  total, active = api.count_params(m, params)
  log(f"parameters: {total:,} total, {active:,} active per token "
      f"({m.num_experts} experts, top-{m.router.k}; random init)")
  cache = new_cache()

  def prefill(cache):
    last = [None] * n
    for batch in parts.prefill_batches(prompts, cfg.generate.chunk, rows):
      logits, cache, _ = step(params, cache, batch)
      lens = np.asarray(batch.prefill.segment_ids_BxL >= 0).sum(1)
      pre = np.asarray(logits["prefill"])  # one device->host copy per step
      for i in np.nonzero(lens)[0]:
        last[i] = pre[i, lens[i] - 1]
    return np.stack([np.asarray(x) for x in last]).argmax(-1), cache

  def decode(cache, first):
    out, tok, pos = [first], first, np.array([len(p) for p in prompts])
    pad = rows - n
    seg = np.concatenate([np.arange(n), -np.ones(pad)])
    for _ in range(cfg.generate.max_new_tokens - 1):
      batch = parts.StepBatch(
          parts.decode_part(np.concatenate([tok, np.zeros(pad)]), np.arange(rows),
                            np.concatenate([pos, np.zeros(pad)]), seg),
          parts.empty_part(0, cfg.generate.chunk))
      logits, cache, _ = step(params, cache, batch)
      tok, pos = np.asarray(logits["decode"])[:n].argmax(-1), pos + 1
      out.append(tok)
    return np.stack(out, 1), cache

  t0 = time.perf_counter()  # warm-up: compiles both step shapes
  first, warm_cache = prefill(cache)
  decode(warm_cache, first)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  first, cache = prefill(new_cache())
  prefill_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  generated, cache = decode(cache, first)
  decode_s = time.perf_counter() - t0

  for p, g in zip(DEMO_PROMPTS[:n], generated):
    log(f"  {p!r} -> {tokenizer.decode(g)!r}")
  prompt_tokens = sum(len(p) for p in prompts)
  decoded = n * (cfg.generate.max_new_tokens - 1)  # the first token comes from the prefill
  figures = dict(params_total=total, params_active=active, compile_s=compile_s,
                 prefill_tok_s=prompt_tokens / prefill_s, decode_tok_s=decoded / decode_s)
  log(f"warm-up/compile {compile_s:.2f}s; prefill {figures['prefill_tok_s']:.0f} tok/s "
      f"({prompt_tokens} tokens); decode {figures['decode_tok_s']:.0f} tok/s "
      f"({decoded} tokens in {cfg.generate.max_new_tokens - 1} steps of batch {n}) on "
      f"{jax.devices()[0].platform}")
  return figures
