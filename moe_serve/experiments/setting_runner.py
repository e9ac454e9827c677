"""One study setting (a full config), run: determinism, then serving and quality on one engine.

`run` applies the setting (experiments/settings.py), builds and warms up the setting's engine,
runs the repeat-in-traffic experiment (experiments/determinism.py), then, with the same engine: a
load run (the background workload served to completion) for throughput and latency, and the
quality evaluation (task exact match, text NLL) with every eval request arriving at once, so
quality is measured under co-batching. Clock: the config's (the default `cost_model` makes
everything reproducible). On a mesh (`mesh=`) the engine's step and cache are sharded; in a
multi-process run every process checks at the end of the setting that all engine runs gave every
process the same request records (`Digesting`, parallel/spmd.py).

With an output directory (a sweep run's), a setting writes `config.json` (its resolved config)
and the experiment's files (experiments/determinism.py); the sweep writes the returned result as
`result.json` (its `setting`: settings.StudySetting).
"""
import json
import time

import numpy as np

from moe_serve import files
from moe_serve import loading
from moe_serve.experiments import determinism, prompts, quality_runners, settings, traffic
from moe_serve.metrics import latency, quality
from moe_serve.parallel import spmd
from moe_serve.serving import run as serve_run
from moe_serve.serving.stream import prompt_sources

QUALITY_ID0 = 4_000_000  # quality requests' ids (traffic.py: background, targets, co-requests)


class Digesting:
  """An engine whose every `run` adds its request records to `digest` (spmd.Digest): the
  setting's records sink, checked across processes at the end of the setting. Everything else
  (clock, limits, ...) is the engine's."""

  def __init__(self, engine):
    self.engine, self.digest = engine, spmd.Digest()

  def run(self, *args, **kwargs):
    runlog = self.engine.run(*args, **kwargs)
    self.digest.add(runlog.requests)
    return runlog

  def __getattr__(self, name):
    return getattr(self.engine, name)


def make_engine(cfg, params, mesh=None):
  """The setting's engine (on `mesh` if given), warmed up (every later step reuses its compiled
  shapes)."""
  engine = serve_run.build_engine(cfg, params=params, mesh=mesh)
  engine.warmup()
  return engine


def run(cfg, params, log=print, mesh=None, out_dir=None):
  """Runs one setting (on `mesh` if given: `params` placed on it); returns the result dict
  (setting, determinism, per target, serving, quality, wall_s). With `out_dir`, writes the
  setting's files there (module docstring)."""
  cfg = settings.study_config(cfg.copy_and_resolve_references())
  st = cfg.study
  t0 = time.perf_counter()
  if out_dir is not None:
    files.write_text_atomic(files.join(out_dir, "config.json"),
                            json.dumps(cfg.to_dict(), indent=1, sort_keys=True, default=str))
  engine = Digesting(make_engine(cfg, params, mesh))
  # Background prompts: workload.prompt_source, with the model's tokenizer.
  source = prompt_sources.make(cfg.workload.get("prompt_source", "eval"), loading.tokenizer(cfg),
                               cfg.workload.seed)
  per_target, agg = determinism.repeat_in_traffic(cfg, engine, source, out_dir)
  t_determinism = time.perf_counter() - t0

  # ----------------------------------------------------------------- serving and quality
  load_log = engine.run(traffic.background(cfg, source, cfg.workload.seed))
  serving = latency.summarize(load_log.requests)
  step_s = [w["step_s"] for w in load_log.wall]
  serving["step_wall_ms_median"] = float(np.median(step_s) * 1e3) if step_s else None
  serving["output_tok_per_wall_s"] = (serving["output_tokens"] / sum(step_s)) if step_s else None
  examples = prompts.eval_examples(st.quality_per_domain)
  runner = quality_runners.EngineRunner(cfg, params, engine=engine, first_id=QUALITY_ID0,
                                        mesh=mesh)
  q = quality.evaluate(runner, examples, st.get("quality_max_new_tokens") or st.max_new_tokens,
                       source.tok)
  q.pop("records")
  spmd.check_same(engine.digest.hexdigest(), "request records of this setting's runs")
  serving = dict(_serving_fields(serving), clock=engine.clock.source)
  result = dict(setting=settings.StudySetting.of(cfg).to_dict(), determinism=agg,
                per_target=per_target, serving=serving, quality=q,
                wall_s=time.perf_counter() - t0, determinism_wall_s=t_determinism)
  log(f"  unique completions (mean over targets) {agg['unique_completions_mean']:.2f}, "
      f"agree with solo {agg['agree_with_solo']:.2f}, exact match "
      f"{q['exact_match_mean']:.3f}, {result['wall_s']:.0f}s")
  return result


def _serving_fields(s):
  return dict(request_throughput=s["request_throughput"], output_throughput=s["output_throughput"],
              ttft_ms_median=s["ttft_ms"]["median"], ttft_ms_p90=s["ttft_ms"]["p90"],
              tpot_ms_median=s["tpot_ms"]["median"], tpot_ms_p90=s["tpot_ms"]["p90"],
              e2el_ms_median=s["e2el_ms"]["median"], completed=s["completed"],
              step_wall_ms_median=s["step_wall_ms_median"],
              output_tok_per_wall_s=s["output_tok_per_wall_s"],
              per_domain={d: dict(output_throughput=b["output_throughput"],
                                  ttft_ms_median=b["ttft_ms"]["median"],
                                  tpot_ms_median=b["tpot_ms"]["median"])
                          for d, b in s["per_domain"].items()})
