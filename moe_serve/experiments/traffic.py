"""The requests of the repeat-in-traffic experiment (experiments/determinism.py): the targets, and
the traffic each repeat serves them in, seeded by (study.seed, repeat).

- `traffic` mode: the targets are injected at seeded random times into the background traffic
  (`background`: the workload's trace, or the workload generated at the study's load);
- `composition` mode: the targets arrive at time 0 together with `study.co_requests` requests
  each, whose prompts come from `study.co_domains` ("same" = the target's own domain);
- `prefix` mode: per target, `study.co_requests` requests at time 0 with the target's whole
  prompt followed by a tail of their own, and the target injected later, as in `traffic` mode.

Request ids: background traffic 0..num_requests-1, targets from TARGET_ID0, co-requests from
CO_ID0.
"""
import dataclasses

import numpy as np

from moe_serve.experiments import prompts
from moe_serve.serving import run as serve_run
from moe_serve.serving.stream import workload

TARGET_ID0 = 1_000_000
CO_ID0 = 2_000_000


def targets(cfg, source):
  """The study's targets: `study.targets_per_domain` eval prompts of each target domain, run to
  `study.max_new_tokens` whatever they sample (EOS ignored: long completions are the probe)."""
  st = cfg.study
  return [dataclasses.replace(t, ignore_eos=True) for t in prompts.target_requests(
      st.target_domains, st.targets_per_domain, st.max_new_tokens, TARGET_ID0, source.tok)]


def background(cfg, source, seed):
  """The background traffic: the workload's trace if it has one (the same in every repeat),
  else the workload generated with `seed`."""
  if cfg.workload.get("trace"):
    return serve_run.make_requests(cfg, prompt_source=source)
  wl = cfg.workload.copy_and_resolve_references()
  wl.seed = seed
  return workload.generate(wl, source)


def repeat_requests(cfg, target_reqs, source, r):
  """The traffic of repeat r: background + targets, or targets with co-requests (seeded)."""
  st = cfg.study
  rng = np.random.default_rng([st.seed, r])
  if st.mode == "prefix":
    return _prefix_requests(cfg, target_reqs, source, rng)
  if st.mode == "traffic":
    back = background(cfg, source, st.seed * 10_000 + r)
    times = rng.uniform(st.inject_after_s, st.inject_after_s + st.inject_window_s,
                        len(target_reqs))
    return back + [dataclasses.replace(t, arrival=float(a)) for t, a in zip(target_reqs, times)]
  out = list(target_reqs)
  for i, t in enumerate(target_reqs):
    domains = [t.domain] if st.co_domains == "same" else list(cfg.workload.mix.keys())
    out += prompts.co_requests(source, domains, st.co_requests, rng, st.co_max_new_tokens,
                               CO_ID0 + i * st.co_requests)
  return out


def _prefix_requests(cfg, target_reqs, source, rng):
  """Prefix mode (module docstring): per target its co-requests at time 0, each the target's
  prompt plus its own tail (cut to fit max_len), and the target at a seeded later moment."""
  st = cfg.study
  room = cfg.model.max_len - st.co_max_new_tokens
  times = rng.uniform(st.inject_after_s, st.inject_after_s + st.inject_window_s, len(target_reqs))
  out = []
  for i, (t, at) in enumerate(zip(target_reqs, times)):
    out.append(dataclasses.replace(t, arrival=float(at)))
    domains = [t.domain] if st.co_domains == "same" else list(cfg.workload.mix.keys())
    for co in prompts.co_requests(source, domains, st.co_requests, rng, st.co_max_new_tokens,
                                  CO_ID0 + i * st.co_requests):
      out.append(dataclasses.replace(co, prompt=(list(t.prompt) + list(co.prompt[1:]))[:room]))
  return out
