"""End-to-end demo: build the model, prefill a batch of prompts with the cache, decode greedily.

Reports parameter counts, the generated text (up to its first EOS) and prefill/decode tokens per
second. It goes through the same jitted engine step that serving uses (parallel/steps.py), driven
by the greedy loop of experiments/probes/greedy.py (every prompt decodes max_new_tokens tokens; EOS
does not
stop it, so the speed figures count every step). Prompts (`generate.prompts`): `demo`, a fixed
handful, or `eval`, the first eval-set prompt of each domain.
"""
import time

import jax

from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.data import eval_prompts
from moe_serve.metrics import quality
from moe_serve.model import api
from moe_serve.parallel import steps
from moe_serve.experiments.probes import greedy

DEMO_PROMPTS = ("12+34=", "reverse: moe_serve", "def add(a, b):", "The experts ", "sort: dcba")
PROMPT_SETS = ("demo", "eval")


def prompt_texts(kind):
  """The demo's prompt texts: DEMO_PROMPTS, or the first eval prompt of each domain."""
  if kind == "demo":
    return list(DEMO_PROMPTS)
  if kind == "eval":
    first = {}
    for ex in eval_prompts.load(per_domain=1):
      first.setdefault(ex.domain, ex.prompt)
    return list(first.values())
  raise config_lib.ConfigError(f"generate.prompts={kind!r} is not one of {list(PROMPT_SETS)}")


def run(cfg, log=print, mesh=None):
  """Runs the demo (sharded over `mesh` if given); returns a dict of the figures it printed."""
  m = cfg.model
  texts = prompt_texts(cfg.generate.get("prompts", "demo"))
  n = min(cfg.generate.num_prompts, len(texts))
  data = 1 if mesh is None else mesh.shape["data"]
  rows = -(-n // data) * data  # slots and step rows, padded with idle rows to fill `data`
  tok = loading.tokenizer(cfg)  # the model's own (an HF directory's), else bytes
  prompts = [tok.encode(p) for p in texts[:n]]
  if max(len(p) for p in prompts) + cfg.generate.max_new_tokens > m.max_len:
    raise ValueError(f"prompt + generate.max_new_tokens={cfg.generate.max_new_tokens} exceeds "
                     f"model.max_len={m.max_len}")
  params, source = loading.load(cfg, mesh, log=log)
  step = steps.make_step_fn(m, mesh, cfg.logical_axis_rules)
  make_cache = steps.make_cache_fn(m, mesh, cfg.logical_axis_rules)
  new_cache = lambda: make_cache(rows)
  total, active = api.count_params(m, params)
  log(f"parameters: {total:,} total, {active:,} active per token "
      f"({m.num_experts} experts, top-{m.router.k}; "
      f"{source.get('dir') or 'random init, seed %d' % cfg.seed})")
  cache = new_cache()

  chunk, max_new = cfg.generate.chunk, cfg.generate.max_new_tokens
  prefill = lambda cache: greedy.prefill(step, params, cache, prompts, chunk, rows)
  decode = lambda cache, first: greedy.decode(step, params, cache, first,
                                              [len(p) for p in prompts], max_new, chunk, rows,
                                              stop_at_eos=False)

  t0 = time.perf_counter()  # warm-up: compiles both step shapes
  warm_cache, logits = prefill(cache)
  decode(warm_cache, greedy.first_tokens(logits))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  cache, logits = prefill(new_cache())
  first = greedy.first_tokens(logits)
  prefill_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  cache, generated = decode(cache, first)
  decode_s = time.perf_counter() - t0

  for p, g in zip(texts[:n], generated):
    log(f"  {p!r} -> {quality.completion_text(g, tok)[0]!r}")
  prompt_tokens = sum(len(p) for p in prompts)
  decoded = n * (cfg.generate.max_new_tokens - 1)  # the first token comes from the prefill
  figures = dict(params_total=total, params_active=active, compile_s=compile_s,
                 prefill_tok_s=prompt_tokens / prefill_s, decode_tok_s=decoded / decode_s)
  log(f"warm-up/compile {compile_s:.2f}s; prefill {figures['prefill_tok_s']:.0f} tok/s "
      f"({prompt_tokens} tokens); decode {figures['decode_tok_s']:.0f} tok/s "
      f"({decoded} tokens in {cfg.generate.max_new_tokens - 1} steps of batch {n}) on "
      f"{jax.devices()[0].platform}")
  return figures
