"""The repeat-in-traffic experiment for one setting (a full config), plus its serving and quality.

For every target prompt (greedy, temperature 0): a solo reference (the target alone on an idle
engine of the same configuration), then `study.repeats` repeats, each in different seeded traffic:
- `traffic` mode: the target is injected at a seeded random time into seeded background traffic
  (`workload` section: arrival process at the study's load, mixed domains);
- `composition` mode: the target arrives at time 0 together with `study.co_requests` requests
  whose prompts come from `study.co_domains` ("same" = the target's own domain), so batch
  composition itself is the variable;
- `prefix` mode (needs serve.prefix_cache): `study.co_requests` requests per target arrive at
  time 0 with the target's whole prompt followed by a tail of their own (from `co_domains`), and
  the target is injected later, as in `traffic` mode: it reuses the prompt blocks those requests'
  busy steps computed (its solo run computes them alone). Forensics name the requests whose steps
  computed the reused blocks (`cached_from`).
All targets of a repeat share its traffic. Each repeat stops as soon as its targets finish.
Targets run to `study.max_new_tokens` (EOS does not stop them: long completions are the probe).

Arms (`study.arm`): `routing` serves the setting as configured (the default study: one fixed step
shape, so only routing can tell a repeat from solo); `numerical` is dropless (scope `none`) with
the step shapes of `study.numerical_buckets`, which vary with load, so only kernel shapes can.
`study.replay="solo"` forces every target's solo routing in its repeats (serving/replay.py): the
causality check, whatever the scope.

With an output directory (a sweep run's), a setting also writes: `config.json` (its resolved
config), `completions.jsonl` (every target's tokens and text, solo and per repeat),
`forensics.jsonl` (metrics/forensics.py, one line per repeat that differs from solo) and
`routing.npz` (every target's routing codes, solo and per repeat: serving/replay.py's format,
keys `solo_<id>` and `r<repeat>_<id>`).

Then, with the same engine: a load run (the background workload served to completion) for
throughput and latency, and the quality evaluation (task exact match, text NLL) with every eval
request arriving at once, so quality is measured under co-batching. Clock: the config's (the
default `cost_model` makes everything reproducible). On a mesh (`mesh=`) the engine's step and
cache are sharded; in a multi-process run every process checks at the end of the setting that
all engine runs gave every process the same request records (parallel/spmd.py).
"""
import dataclasses
import json
import time

import numpy as np

from moe_serve import files
from moe_serve import loading
from moe_serve.experiments import prompts, quality_runners
from moe_serve.metrics import determinism as det
from moe_serve.metrics import forensics, latency, quality, writers
from moe_serve.model.transformer import num_moe_layers
from moe_serve.parallel import spmd
from moe_serve.serving import replay as replay_lib
from moe_serve.serving import run as serve_run
from moe_serve.serving import prompt_sources
from moe_serve.serving import trace as trace_lib
from moe_serve.serving import workload

TARGET_ID0 = 1_000_000  # targets' request ids; background traffic uses 0..num_requests-1
CO_ID0 = 2_000_000
QUALITY_ID0 = 4_000_000


def apply_capacity_factor(cfg):
  """`study.capacity_factor` and `study.load`, when not None, set the router's prefill and
  decode factors and the workload's arrival rate (so each is one sweep axis); `study.arm`
  "numerical" makes the setting dropless with `study.numerical_buckets`; `study.replay` != "none"
  builds the engine with routing replay."""
  st = cfg.study
  if st.capacity_factor is not None:
    cfg.model.router.capacity_factor_prefill = float(st.capacity_factor)
    cfg.model.router.capacity_factor_decode = float(st.capacity_factor)
  if st.load is not None:
    cfg.workload.arrival.rate = float(st.load)
  if st.get("arm", "routing") == "numerical":
    cfg.model.router.capacity_scope = "none"
    cfg.serve.buckets.update(**{k: tuple(v) for k, v in st.numerical_buckets.items()})
    b = cfg.serve.buckets
    cfg.serve.max_num_batched_tokens = max(b.decode_rows) + max(b.prefill_rows) * max(b.chunk_lens)
  cfg.serve.replay_routing = st.get("replay", "none") != "none"
  return cfg


def _traces(tracer, runlog, ids):
  recs = {r["id"]: r for r in runlog.requests}
  out = {}
  for rid in ids:
    rec = recs[rid]
    if rec["status"] != "finished":
      raise RuntimeError(f"target {rid} ended as {rec['status']} ({rec.get('reason')})")
    fed = rec["prompt_len"] + rec["output_len"] - 1
    codes = tracer.codes_array(rid, fed) if tracer.codes[rid] else None
    routing = tracer.routing_array(rid, fed) if codes is not None else np.zeros((0, 0, 0))
    out[rid] = det.Trace(rec["prompt_len"], tuple(rec["tokens"]), tuple(rec["logprobs"]),
                         np.stack(tracer.dists[rid]), routing, codes)
  return out


def _background(cfg, source, seed):
  """The background traffic: the workload's trace if it has one (the same in every repeat),
  else the workload generated with `seed`."""
  if cfg.workload.get("trace"):
    return serve_run.make_requests(cfg, prompt_source=source)
  wl = cfg.workload.copy_and_resolve_references()
  wl.seed = seed
  return workload.generate(wl, source)


def _repeat_requests(cfg, targets, source, r):
  """The traffic of repeat r: background + targets, or targets with co-requests (seeded)."""
  st = cfg.study
  rng = np.random.default_rng([st.seed, r])
  if st.mode == "prefix":
    return _prefix_requests(cfg, targets, source, rng)
  if st.mode == "traffic":
    background = _background(cfg, source, st.seed * 10_000 + r)
    times = rng.uniform(st.inject_after_s, st.inject_after_s + st.inject_window_s, len(targets))
    return background + [dataclasses.replace(t, arrival=float(a)) for t, a in zip(targets, times)]
  out = list(targets)
  for i, t in enumerate(targets):
    domains = [t.domain] if st.co_domains == "same" else list(cfg.workload.mix.keys())
    out += prompts.co_requests(source, domains, st.co_requests, rng, st.co_max_new_tokens,
                               CO_ID0 + i * st.co_requests)
  return out


def _prefix_requests(cfg, targets, source, rng):
  """Prefix mode (module docstring): per target its co-requests at time 0, each the target's
  prompt plus its own tail (cut to fit max_len), and the target at a seeded later moment."""
  st = cfg.study
  room = cfg.model.max_len - st.co_max_new_tokens
  times = rng.uniform(st.inject_after_s, st.inject_after_s + st.inject_window_s, len(targets))
  out = []
  for i, (t, at) in enumerate(zip(targets, times)):
    out.append(dataclasses.replace(t, arrival=float(at)))
    domains = [t.domain] if st.co_domains == "same" else list(cfg.workload.mix.keys())
    for co in prompts.co_requests(source, domains, st.co_requests, rng, st.co_max_new_tokens,
                                  CO_ID0 + i * st.co_requests):
      out.append(dataclasses.replace(co, prompt=(list(t.prompt) + list(co.prompt[1:]))[:room]))
  return out


def make_engine(cfg, params, mesh=None):
  """The setting's engine (on `mesh` if given), warmed up (every later step reuses its compiled
  shapes). Its `records_digest` (spmd.Digest) takes the request records of every `run`."""
  engine = serve_run.build_engine(cfg, params=params, mesh=mesh)
  engine.warmup()
  engine.records_digest, run_once = spmd.Digest(), engine.run

  def run_and_digest(*args, **kwargs):
    runlog = run_once(*args, **kwargs)
    engine.records_digest.add(runlog.requests)
    return runlog

  engine.run = run_and_digest
  return engine


def repeat_in_traffic(cfg, engine, source, out_dir=None):
  """Solo references and `study.repeats` repeats of every target; returns
  (per-target summaries {id: dict}, aggregate dict). With `out_dir`, also writes the
  completions, forensics and routing files there (module docstring)."""
  st, m = cfg.study, cfg.model
  targets = [dataclasses.replace(t, ignore_eos=True) for t in prompts.target_requests(
      st.target_domains, st.targets_per_domain, st.max_new_tokens, TARGET_ID0, source.tok)]
  ids = [t.id for t in targets]
  domain = {t.id: t.domain for t in targets}
  completions, forensic_recs, codes = [], [], {}

  def keep(rid, tr, repeat):
    completions.append(dict(id=rid, domain=domain[rid], repeat=repeat, tokens=list(tr.tokens),
                            text=quality.completion_text(tr.tokens, source.tok)[0]))
    if tr.codes is not None:
      codes[f"{'solo' if repeat is None else f'r{repeat}'}_{rid}"] = tr.codes

  # ----------------------------------------------------------------- solo references
  t0 = time.perf_counter()
  solo = {}
  for t in targets:
    tracer = trace_lib.Tracer([t.id])
    solo.update(_traces(tracer, engine.run([t], tracer=tracer), [t.id]))
    keep(t.id, solo[t.id], None)
  replay = None
  if st.get("replay", "none") == "solo":
    replay = {rid: tr.codes for rid, tr in solo.items()}

  # ----------------------------------------------------------------- repeats in traffic
  t_solo = time.perf_counter() - t0
  runs = {rid: [] for rid in ids}
  traffic_drops = []
  for r in range(st.repeats):
    tracer = trace_lib.Tracer(ids, co_routing=True,
                              prefix_cache=cfg.serve.get("prefix_cache", False))
    runlog = engine.run(_repeat_requests(cfg, targets, source, r), tracer=tracer, stop_after=ids,
                        replay=replay)
    reqs = {q["id"]: q for q in runlog.requests}
    for rid, tr in _traces(tracer, runlog, ids).items():
      runs[rid].append(tr)
      keep(rid, tr, r)
      rec = forensics.diagnose(solo[rid], tr, rid, tracer.steps, tracer.step_of[rid], reqs)
      if rec is not None:
        if "cached_from" in reqs[rid]:  # prefix cache: whose steps computed the reused blocks
          rec["cached_from"] = reqs[rid]["cached_from"]
        forensic_recs.append(dict(id=rid, domain=domain[rid], repeat=r, **rec))
    traffic_drops.append(det.traffic_drop_rate(runlog.steps, m.router.k, num_moe_layers(m)))
  if out_dir is not None:
    writers.write_jsonl(files.join(out_dir, "completions.jsonl"), completions)
    writers.write_jsonl(files.join(out_dir, "forensics.jsonl"), forensic_recs)
    if codes:
      replay_lib.save(files.join(out_dir, "routing.npz"), codes)

  per_target = {}
  for t in targets:
    s = det.summarize(solo[t.id], runs[t.id])
    s.update(domain=t.domain,
             solo_completion=quality.completion_text(solo[t.id].tokens, source.tok)[0])
    per_target[str(t.id)] = s
  agg = _aggregate(per_target)
  agg["traffic_drop_rate"] = (float(np.mean(traffic_drops))
                              if all(x is not None for x in traffic_drops) else None)
  agg["forensics"] = forensics.aggregate(forensic_recs)
  agg["solo_wall_s"], agg["repeats_wall_s"] = t_solo, time.perf_counter() - t0 - t_solo
  return per_target, agg


def run(cfg, params, log=print, mesh=None, out_dir=None):
  """Runs one setting (on `mesh` if given: `params` placed on it); returns the result dict
  (setting, determinism, per target, serving, quality, wall_s). With `out_dir`, writes the
  setting's files there (module docstring)."""
  cfg = apply_capacity_factor(cfg.copy_and_resolve_references())
  st, m = cfg.study, cfg.model
  t0 = time.perf_counter()
  if out_dir is not None:
    files.write_text_atomic(files.join(out_dir, "config.json"),
                            json.dumps(cfg.to_dict(), indent=1, sort_keys=True, default=str))
  engine = make_engine(cfg, params, mesh)
  # Background prompts: workload.prompt_source, with the model's tokenizer.
  source = prompt_sources.make(cfg.workload.get("prompt_source", "eval"), loading.tokenizer(cfg),
                               cfg.workload.seed)
  per_target, agg = repeat_in_traffic(cfg, engine, source, out_dir)
  t_determinism = time.perf_counter() - t0

  # ----------------------------------------------------------------- serving and quality
  load_log = engine.run(_background(cfg, source, cfg.workload.seed))
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
  spmd.check_same(engine.records_digest.hexdigest(), "request records of this setting's runs")
  r = m.router
  setting = dict(scope=r.capacity_scope, capacity_factor=r.capacity_factor_decode,
                 priority=r.priority, router=r.kind, k=r.k, load=cfg.workload.arrival.rate,
                 mode=st.mode, arm=st.get("arm", "routing"), replay=st.get("replay", "none"),
                 invariant=bool(m.get("batch_invariant", False)),
                 co_domains=st.co_domains if st.mode in ("composition", "prefix") else None)
  serving = dict(_serving_fields(serving), clock=engine.clock.source)
  result = dict(setting=setting, determinism=agg, per_target=per_target, serving=serving,
                quality=q, wall_s=time.perf_counter() - t0, determinism_wall_s=t_determinism)
  log(f"  unique completions (mean over targets) {agg['unique_completions_mean']:.2f}, "
      f"agree with solo {agg['agree_with_solo']:.2f}, exact match "
      f"{q['exact_match_mean']:.3f}, {result['wall_s']:.0f}s")
  return result


def _aggregate(per_target):
  """Means over targets, and bootstrap intervals over targets (metrics/determinism.py) of the
  unique completions, the fraction of targets with a divergent repeat and their mean first
  divergence position."""
  vals = list(per_target.values())
  mean = lambda k: float(np.mean([v[k] for v in vals]))
  ci = {}
  for name, xs in (("unique_completions", [v["unique_completions"] for v in vals]),
                   ("targets_diverging", [float(v["agree_with_solo"] < 1) for v in vals]),
                   ("first_divergence", [v["first_divergence_mean"] for v in vals])):
    m_, lo, hi = det.bootstrap_ci(xs)
    ci.update({f"{name}_ci_mean": m_, f"{name}_ci_low": lo, f"{name}_ci_high": hi})
  return dict(
      targets=len(vals),
      **ci,
      unique_completions_mean=mean("unique_completions"),
      unique_completions_max=max(v["unique_completions"] for v in vals),
      agree_with_solo=mean("agree_with_solo"),
      bitwise_with_solo=mean("bitwise_with_solo"),
      max_kl=max(v["max_kl"] for v in vals),
      max_abs_dlogprob=max(v["max_abs_dlogprob"] for v in vals),
      routing_diff_fraction=mean("routing_diff_fraction"),
      target_drop_rate=mean("target_drop_rate"),
  )


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
