"""The repeat-in-traffic experiment: how often a target's completion changes with the traffic
it is served in.

For every target prompt (greedy, temperature 0; experiments/traffic.py): a solo reference (the
target alone on an idle engine of the same configuration), then `study.repeats` repeats, each in
different seeded traffic (`traffic`, `composition` or `prefix` mode: experiments/traffic.py). All
targets of a repeat share its traffic. Each repeat stops as soon as its targets finish. In
`prefix` mode (needs serve.prefix_cache) a target reuses the prompt blocks its co-requests' busy
steps computed (its solo run computes them alone); forensics name the requests whose steps
computed the reused blocks (`cached_from`).

Arms (`study.arm`, experiments/settings.py): `routing` serves the setting as configured (the
default study: one fixed step shape, so only routing can tell a repeat from solo); `numerical` is
dropless (scope `none`) with the step shapes of `study.numerical_buckets`, which vary with load,
so only kernel shapes can. `study.replay="solo"` forces every target's solo routing in its
repeats (serving/loop/replay.py): the causality check, whatever the scope.

With an output directory (a sweep run's) it also writes `completions.jsonl` (every target's
tokens and text, solo and per repeat), `forensics.jsonl` (metrics/forensics.py, one line per
repeat that differs from solo) and `routing.npz` (every target's routing codes, solo and per
repeat: serving/loop/replay.py's format, keys `solo_<id>` and `r<repeat>_<id>`).
"""
import time

import numpy as np

from moe_serve import files
from moe_serve.experiments import traffic
from moe_serve.metrics import determinism as det
from moe_serve.metrics import forensics, quality, writers
from moe_serve.model.transformer import num_moe_layers
from moe_serve.serving.loop import replay as replay_lib
from moe_serve.experiments.probes import trace as trace_lib


def traces(tracer, runlog, ids):
  """{id: det.Trace} of the requests `ids` from a run's tracer and records (RuntimeError naming
  a target that did not finish)."""
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


def repeat_in_traffic(cfg, engine, source, out_dir=None):
  """Solo references and `study.repeats` repeats of every target; returns
  (per-target summaries {id: dict}, aggregate dict). With `out_dir`, also writes the
  completions, forensics and routing files there (module docstring)."""
  st, m = cfg.study, cfg.model
  targets = traffic.targets(cfg, source)
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
    solo.update(traces(tracer, engine.run([t], tracer=tracer), [t.id]))
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
    runlog = engine.run(traffic.repeat_requests(cfg, targets, source, r), tracer=tracer,
                        stop_after=ids, replay=replay)
    reqs = {q["id"]: q for q in runlog.requests}
    for rid, tr in traces(tracer, runlog, ids).items():
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
  agg = det.aggregate(per_target)
  agg["traffic_drop_rate"] = (float(np.mean(traffic_drops))
                              if all(x is not None for x in traffic_drops) else None)
  agg["forensics"] = forensics.aggregate(forensic_recs)
  agg["solo_wall_s"], agg["repeats_wall_s"] = t_solo, time.perf_counter() - t0 - t_solo
  return per_target, agg
