"""One serving run from a config: build the engine, warm up, serve the workload, write the logs.

Files under the workdir (DESIGN.md section 3, Exports):
- steps.jsonl, requests.jsonl: the deterministic records (byte-identical across runs with the
  same seed and config in cost_model mode);
- wall.jsonl: wall seconds per step (step, and host work around it); never deterministic;
- summary.json, summary.csv: latency/throughput metrics plus run facts (the `wall` entry and
  `compiles_after_warmup` are measurements of this process, not of the simulated server);
- config.json; tb/ with TensorBoard scalars when serve.tensorboard is set.
"""
import os
import time

import jax

from moe_serve import config as config_lib
from moe_serve.metrics import latency, table, writers
from moe_serve.model import api
from moe_serve.parallel import compiles, steps
from moe_serve.serving import clock as clock_lib
from moe_serve.serving import workload
from moe_serve.serving.engine import Engine


def make_step_fn(cfg, mesh=None):
  """The jitted step from parallel/steps.py (sharded on `mesh` if given); it records routing
  when `serve.record_routing` is set."""
  rules = cfg.logical_axis_rules if mesh is not None else None
  return steps.make_step_fn(cfg.model, mesh, rules, record_routing=cfg.serve.record_routing)


def build_engine(cfg, step_fn=None, params=None, cache=None, mesh=None):
  """An Engine for `cfg`; pass `params` to serve a trained model, `mesh` to shard it (then the
  step, parameters and cache come from parallel/steps.py's sharded builders).

  Without `params` the model is randomly initialised from cfg.seed (the same values on any mesh).
  """
  m, rules = cfg.model, cfg.logical_axis_rules
  step_fn = step_fn or make_step_fn(cfg, mesh)
  if params is None:
    params = (steps.make_init_fn(m, mesh, rules)(cfg.seed) if mesh is not None
              else api.init_params(m, jax.random.key(cfg.seed)))
  if cache is None:
    cache = (steps.make_cache_fn(m, mesh, rules)(cfg.serve.max_num_seqs) if mesh is not None
             else jax.device_put(api.init_cache(m, cfg.serve.max_num_seqs), jax.devices()[0]))
    # Committed to a device like the step's donated output, so the warm-up compiles each
    # bucket once rather than once uncommitted and once committed.
  return Engine(cfg, step_fn, params, cache, clock_lib.Clock(cfg.clock))


def make_requests(cfg, prompt_source=None):
  """The trace in workload.trace if set, else the generated workload (synthetic prompts)."""
  if cfg.workload.trace:
    return workload.load_trace(cfg.workload.trace)
  return workload.generate(cfg.workload, prompt_source or workload.SyntheticPromptSource())


def serve(cfg, workdir, engine=None, requests=None, slo_ttft_ms=None, slo_tpot_ms=None,
          on_step=None, log=print):
  """Runs the whole thing; returns (summary dict, RunLog). Writes the files listed above."""
  config_lib.validate(cfg)
  config_lib.validate_serve(cfg)
  os.makedirs(workdir, exist_ok=True)
  random_init = engine is None
  engine = engine or build_engine(cfg)
  requests = make_requests(cfg) if requests is None else requests
  if random_init:
    log("model: random init from config seed (no trained weights loaded)")

  # ----------------------------------------------------------------- warm-up: compile every bucket
  t0 = time.perf_counter()
  with compiles.count_compiles() as warm_compiles:
    engine.warmup()
  warmup_s = time.perf_counter() - t0

  # ----------------------------------------------------------------- serve
  tb = writers.TensorBoard(os.path.join(workdir, "tb")) if cfg.serve.tensorboard else None

  def step_hook(eng, rec):
    if tb is not None:
      tb.step(rec)
    if on_step is not None:
      on_step(eng, rec)

  t0 = time.perf_counter()
  with compiles.count_compiles() as run_compiles:
    runlog = engine.run(requests, on_step=step_hook)
  run_s = time.perf_counter() - t0

  # ----------------------------------------------------------------- summary and files
  summary = latency.summarize(runlog.requests, slo_ttft_ms, slo_tpot_ms)
  step_s = sum(w["step_s"] for w in runlog.wall)
  host_s = sum(w["host_s"] for w in runlog.wall)
  summary.update(
      steps=len(runlog.steps), clock_mode=cfg.clock.mode, batching=cfg.serve.batching,
      policy=cfg.serve.policy, params="random init" if random_init else "given",
      compiles_warmup=warm_compiles(), compiles_after_warmup=run_compiles(),
      wall=dict(warmup_s=warmup_s, run_s=run_s, step_s=step_s, host_s=host_s,
                host_fraction=host_s / step_s if step_s else None,
                output_tok_per_wall_s=summary["output_tokens"] / run_s if run_s else None))
  writers.write_jsonl(os.path.join(workdir, "steps.jsonl"), runlog.steps)
  writers.write_jsonl(os.path.join(workdir, "requests.jsonl"), runlog.requests)
  writers.write_jsonl(os.path.join(workdir, "wall.jsonl"), runlog.wall)
  writers.write_json(os.path.join(workdir, "summary.json"), summary)
  writers.write_summary_csv(os.path.join(workdir, "summary.csv"), summary)
  writers.write_json(os.path.join(workdir, "config.json"), cfg.to_dict())
  if tb is not None:
    tb.summary(summary)
    tb.close()
  log(table.format_summary(summary))
  return summary, runlog
