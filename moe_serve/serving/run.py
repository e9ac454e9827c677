"""One serving run from a config: build the engine, warm up, serve the workload, write the logs.

Files under the workdir (docs/design.md section 3, Exports):
- steps.jsonl, requests.jsonl: the deterministic records (byte-identical across runs with the
  same seed and config in cost_model mode);
- wall.jsonl: wall seconds per step (step, and host work around it); never deterministic;
- summary.json, summary.csv: latency/throughput metrics plus run facts (the `wall` entry and
  `compiles_after_warmup` are measurements of this process, not of the simulated server);
- summary.json's `provenance`: versions, devices, git commit, config hash, start time
  (moe_serve/provenance.py);
- benchmark.json: the same run under vLLM `bench serve` field names (metrics/benchmark.py);
- plots/latency_cdf.png, plots/over_time.png when serve.plots is set (metrics/serve_plots.py);
- config.json; skipped_lines.jsonl (bad trace lines, with workload.skip_bad_lines); tb/ with
  TensorBoard scalars when serve.tensorboard is set.
Each file is written under a temporary name and renamed when complete (on an object store,
`gs://`: written once as a whole object; files.py), so a killed run or a full disk never leaves a
truncated file posing as a complete one. `summary.json`'s `params` says where
the parameters came from (a model directory and its step, or a random init and its seed), its
`memory` the parameter and cache bytes per device from their shardings (parallel/memory.py).

Multi-process (SPMD): every process serves the same requests on the same virtual clock; only
process 0 writes files and logs, and every process checks that all hold the same request records
(parallel/spmd.py: a digest; `DivergedError` otherwise).
"""
import dataclasses
import datetime
import time

import jax

from moe_serve import config as config_lib
from moe_serve import files
from moe_serve import loading
from moe_serve import provenance
from moe_serve.metrics import benchmark, latency, serve_plots, table, writers
from moe_serve.parallel import compiles, distributed, memory, spmd, steps
from moe_serve.parallel import mesh as mesh_lib
from moe_serve.serving.clock import running as clock_lib
from moe_serve.serving import profiling
from moe_serve.serving.clock import profiles
from moe_serve.serving.stream import prompt_sources, trace_formats, workload
from moe_serve.serving.loop.engine import Engine


_STEP_FNS = {}


def make_step_fn(cfg, mesh=None):
  """The jitted step from parallel/steps.py (sharded on `mesh` if given); it records routing
  when `serve.record_routing` is set. One per (model, mesh, rules, record_routing) in a process,
  so engines of the same model (a study's, a serving run's) share its compiled shapes."""
  rules = cfg.logical_axis_rules
  key = (cfg.model.to_json(sort_keys=True), mesh, tuple(tuple(r) for r in rules),
         bool(cfg.serve.record_routing))
  if key not in _STEP_FNS:
    _STEP_FNS[key] = steps.make_step_fn(cfg.model, mesh, rules,
                                        record_routing=cfg.serve.record_routing)
  return _STEP_FNS[key]


def make_mesh(cfg):
  """The mesh `cfg.mesh` asks for over every device of every process (a mesh of sizes 1 x 1 x 1:
  the first device, in a one-process run); ConfigError naming the numbers if it does not fit the
  devices, the model, or the step rows and slots."""
  devices = jax.devices()
  if all(cfg.mesh[a] == 1 for a in config_lib.MESH_AXES) and len(devices) > 1:
    if jax.process_count() > 1:
      raise config_lib.ConfigError(
          f"a {jax.process_count()}-process run needs a mesh over all {len(devices)} devices, "
          "got mesh 1 x 1 x 1; set e.g. --config.mesh.data=-1 (or expert/tensor sizes)")
    devices = devices[:1]
  mesh = mesh_lib.make_mesh(cfg.mesh, cfg.model, devices)
  config_lib.validate_serve_mesh(cfg, mesh.shape["data"])
  return mesh


def build_engine(cfg, step_fn=None, params=None, cache=None, mesh=None, clock=None):
  """An Engine for `cfg`, sharded on `mesh` if given (then the step and cache come from
  parallel/steps.py's sharded builders). Without `params` they come from the one loading path
  (moe_serve/loading.py: `cfg.params_dir`, or a random init from cfg.seed, the same values on any
  mesh); pass `params` to reuse parameters already placed. `clock`: the engine's clock (default
  the config's, `make_clock`).
  """
  m, rules = cfg.model, cfg.logical_axis_rules
  step_fn = step_fn or make_step_fn(cfg, mesh)
  if params is None:
    params, _ = loading.load(cfg, mesh)
  if cache is None:
    cache = steps.make_cache_fn(m, mesh, rules)(cfg.serve.max_num_seqs)
  return Engine(cfg, step_fn, params, cache, clock or make_clock(cfg))


def make_clock(cfg):
  """The config's clock, with the coefficients of the clock profile clock.profile picks
  (serving/clock/profiles.py; ProfileError when none fits)."""
  res = profiles.resolve(cfg)
  return clock_lib.Clock(cfg.clock, res.coef, res.describe())


def make_requests(cfg, prompt_source=None, skipped=None, counts=None):
  """The trace in workload.trace if set (format workload.trace_format, docs/traces.md), else the
  generated workload; prompts from `prompt_source` or the one workload.prompt_source names.
  An imported trace (not jsonl) puts its counts in the dict `counts` if given: `left_out` (by the
  format's filter) and `prompt_only` (ShareGPT requests served with a drawn output length).

  With `workload.skip_bad_lines`, bad trace lines are appended to `skipped` (a list) as
  {"line", "reason"} and the rest are served; otherwise the first bad line is a TraceError.
  `workload.max_requests` (0: all) caps a trace and `workload.time_scale` multiplies its arrival
  times.
  """
  wl = cfg.workload
  tok = loading.tokenizer(cfg)
  if prompt_source is None:
    prompt_source = prompt_sources.make(wl.get("prompt_source", "synthetic"), tok, wl.seed)
  if not wl.trace:
    return workload.generate(wl, prompt_source)
  if wl.get("skip_bad_lines", False):
    skipped = [] if skipped is None else skipped
  else:
    skipped = None
  fmt = wl.get("trace_format", "jsonl")
  if fmt != "jsonl":
    requests, found = trace_formats.load(wl, wl.trace, fmt, tok,
                                         prompt_sources.exact_length(prompt_source), skipped)
    if counts is not None:
      counts.update(found)
    return requests
  requests = workload.load_trace(wl.trace, skipped=skipped, tok=tok)
  requests = requests[:wl.get("max_requests", 0) or None]
  scale = float(wl.get("time_scale", 1.0))
  return [dataclasses.replace(r, arrival=r.arrival * scale) for r in requests] if scale != 1 \
      else requests


def serve(cfg, workdir, engine=None, requests=None, slo_ttft_ms=None, slo_tpot_ms=None,
          on_step=None, log=print, params_source=None, skipped_lines=(), slo_e2el_ms=None,
          percentiles=benchmark.DEFAULT_PERCENTILES, profile_dir=None, profile_steps=20,
          progress=None, trace_counts=None):
  """Runs the whole thing; returns (summary dict, RunLog). Writes the files listed above.

  `params_source` says where the engine's parameters came from (loading.load's second value;
  default: the config's `params_dir` or seed when this builds the engine); `skipped_lines` are
  the bad trace lines that make_requests skipped, kept in skipped_lines.jsonl, and
  `trace_counts` its counts (summary `trace_left_out`, `trace_prompt_only`). `percentiles` are
  benchmark.json's (vLLM's --metric-percentiles). With `profile_dir`, the first `profile_steps`
  steps after warm-up are traced by jax.profiler into it (serving/profiling.py). `progress(what,
  done, total)` hears of each step shape compiled in warm-up.
  """
  config_lib.validate_for(cfg, "serve")
  stamp = provenance.provenance(cfg)  # software, devices, commit, config hash, start time
  started = datetime.datetime.now()
  write = distributed.is_logging_process()  # process 0 alone writes files and logs
  if write:
    files.makedirs(workdir)
  skipped_lines = list(skipped_lines)
  trace_counts = dict(trace_counts or {})
  if engine is None:
    engine = build_engine(cfg)
    params_source = loading.source(cfg)
  if requests is None:
    requests = make_requests(cfg, skipped=skipped_lines, counts=trace_counts)
  if trace_counts.get("prompt_only"):
    log(f"workload: {trace_counts['prompt_only']} trace requests have no reply; their output "
        "lengths are drawn from workload.output_len")
  if skipped_lines:
    log(f"workload: skipped {len(skipped_lines)} bad trace lines (skipped_lines.jsonl); "
        f"first: line {skipped_lines[0]['line']}: {skipped_lines[0]['reason']}")

  # ----------------------------------------------------------------- warm-up: compile every bucket
  t0 = time.perf_counter()
  with compiles.count_compiles() as warm_compiles:
    engine.warmup(progress)
  warmup_s = time.perf_counter() - t0

  # ----------------------------------------------------------------- serve
  tb = (writers.TensorBoard(files.join(workdir, writers.TB_DIR))
        if cfg.serve.tensorboard and write else None)

  profiler = profiling.StepTrace(profile_dir, profile_steps) if profile_dir and write else None

  def step_hook(eng, rec):
    if profiler is not None:
      profiler.step()
    if tb is not None:
      tb.step(rec)
    if on_step is not None:
      on_step(eng, rec)

  if profiler is not None:
    profiler.start()
  t0 = time.perf_counter()
  with compiles.count_compiles() as run_compiles:
    runlog = engine.run(requests, on_step=step_hook)
  run_s = time.perf_counter() - t0
  if profiler is not None and profiler.stop():
    log(f"profile: {min(profiler.seen, profile_steps)} steps traced in {profiler.directory} "
        f"(tensorboard --logdir={profiler.directory}, or open its *.trace.json.gz in "
        "https://ui.perfetto.dev)")

  # ----------------------------------------------------------------- summary and files
  summary = latency.summarize(runlog.requests, slo_ttft_ms, slo_tpot_ms, slo_e2el_ms)
  step_s = sum(w["step_s"] for w in runlog.wall)
  host_s = sum(w["host_s"] for w in runlog.wall)
  summary.update(
      steps=len(runlog.steps), clock_mode=cfg.clock.mode, clock_source=engine.clock.source,
      batching=cfg.serve.batching,
      policy=cfg.serve.policy, params=params_source or "given (source not recorded)",
      skipped_trace_lines=len(skipped_lines), provenance=stamp,
      compiles_warmup=warm_compiles(), compiles_after_warmup=run_compiles(),
      wall=dict(warmup_s=warmup_s, run_s=run_s, step_s=step_s, host_s=host_s,
                host_fraction=host_s / step_s if step_s else None,
                overlap_misses=engine.overlap_misses,
                output_tok_per_wall_s=summary["output_tokens"] / run_s if run_s else None))
  summary.update({f"trace_{k}": v for k, v in sorted(trace_counts.items())})
  pool = {} if engine.pool is None else dict(prefix_pool=engine.pool.pool)
  summary["memory"] = memory.measured(engine.params, engine.cache, **pool)
  spmd.check_same(spmd.Digest().add(runlog.requests).hexdigest(), "request records")
  if not write:
    return summary, runlog
  writers.write_jsonl(files.join(workdir, "steps.jsonl"), runlog.steps)
  writers.write_jsonl(files.join(workdir, "requests.jsonl"), runlog.requests)
  writers.write_jsonl(files.join(workdir, "wall.jsonl"), runlog.wall)
  writers.write_json(files.join(workdir, "summary.json"), summary)
  writers.write_summary_csv(files.join(workdir, "summary.csv"), summary)
  bench = benchmark.result(runlog.requests, percentiles,
                           dict(ttft=slo_ttft_ms, tpot=slo_tpot_ms, e2el=slo_e2el_ms),
                           benchmark.metadata(cfg, params_source, started))
  writers.write_json(files.join(workdir, "benchmark.json"), bench)
  writers.write_json(files.join(workdir, "config.json"), cfg.to_dict())
  if skipped_lines:
    writers.write_jsonl(files.join(workdir, "skipped_lines.jsonl"), skipped_lines)
  if cfg.serve.get("plots", False):
    written = serve_plots.write_all(runlog.steps, runlog.requests, files.join(workdir, "plots"),
                                    cfg.serve.kv_num_blocks, cfg.serve.max_num_seqs)
    log(f"plots: {', '.join(p[len(files.join(workdir, '')):] for p in written)} in {workdir}"
        if written else "plots: skipped (matplotlib is not installed: pip install -e '.[plots]')")
  text = table.format_summary(summary)
  if tb is not None:
    tb.summary(summary, text=text)
    tb.close()
    log(f"TensorBoard: tensorboard --logdir={files.join(workdir, writers.TB_DIR)} (then open "
        "http://localhost:6006: SCALARS per step, TEXT for the summary)")
  log(text)
  return summary, runlog
