"""Divergence forensics: why one repeat of a target differs from its solo reference.

For a repeat that is not bitwise its solo reference (metrics/determinism.py `Trace`s with replay
codes and the engine step of each position), `diagnose` names:
- the first differing output token (None if only log-probs differ), the solo and repeat tokens
  there, the solo run's logit margin at it (top-1 minus top-2 log-probability: how close the solo
  choice was), and the first output whose log-prob differs;
- the first (position, MoE layer), in position order then layer order, whose routing differs over
  the positions fed with identical inputs, and how: `dropped` (a choice the solo run kept was
  dropped for capacity), `gained` (a choice the solo run dropped was kept) or `expert_changed`
  (the router chose another expert: its input already differed numerically); None when no
  routing differs (a purely numerical divergence);
- which other requests held that expert's slots in that step and layer (kept pairs on it), with
  their domain and arrival, most pairs first.
`aggregate` counts records by cause (`numerical` where no routing differs), layer, expert and
co-request domain (the report's section).

Axis letters: U positions a request fed, Y MoE layers, K choices per token, T' real tokens of a
step.
"""
import collections

import numpy as np

from moe_serve.metrics import determinism as det


def _margin(dist_V):
  top2 = np.sort(np.asarray(dist_V, np.float64))[-2:]
  return float(top2[1] - top2[0])


def _first_routing_diff(solo_UxYxK, run_UxYxK, upto):
  """(position, layer) of the first differing routing (codes as sets per (position, layer))."""
  u = min(upto, len(solo_UxYxK), len(run_UxYxK))
  hits = np.argwhere(det.routing_sets_differ(solo_UxYxK[:u], run_UxYxK[:u]))
  return None if not len(hits) else tuple(int(x) for x in hits[0])


def _cause(solo_K, run_K):
  """(kind, expert) of the difference between two rows of codes of one (position, layer)."""
  solo_e, run_e = set(np.abs(solo_K) - 1), set(np.abs(run_K) - 1)
  if solo_e == run_e:
    lost = [abs(c) - 1 for c in solo_K if c > 0 and -c in run_K]
    if lost:
      return "dropped", int(lost[0])
    return "gained", int(next(abs(c) - 1 for c in run_K if c > 0 and -c in solo_K))
  return "expert_changed", int(min(solo_e - run_e))


def holders(step_routing, rid, layer, expert):
  """{request id: kept pairs on `expert` at `layer`} of the requests other than `rid` in a step
  (a tracer.StepRouting)."""
  held_T = (step_routing.codes[:, layer] == expert + 1).sum(-1)
  out = collections.Counter()
  for seg, n in zip(step_routing.segment_ids.tolist(), held_T.tolist()):
    if n and seg != rid:
      out[int(seg)] += n
  return dict(out)


def diagnose(solo: det.Trace, run: det.Trace, rid, run_steps, step_of, requests):
  """The forensics record of one repeat (None if it is bitwise solo's). `run_steps`: the
  repeat's {step: StepRouting}; `step_of`: {position: step} of the target in the repeat;
  `requests`: {id: request record} of the repeat (domain, arrival)."""
  div = det.first_divergence(solo.tokens, run.tokens)
  lp_div = det.first_divergence(solo.logprobs, run.logprobs)
  if div is None and lp_div is None:
    return None
  at = lambda xs: None if div is None or div >= len(xs) else xs[div]
  rec = dict(first_divergence=div, first_logprob_divergence=lp_div,
             solo_token=at(solo.tokens), run_token=at(run.tokens),
             solo_margin=None if at(solo.dists) is None else _margin(solo.dists[div]),
             prompt_len=solo.prompt_len, routing_position=None, in_prompt=None, layer=None,
             cause=None,
             expert=None, step=None, holders=[])
  # positions fed with identical inputs in both runs
  fed = solo.prompt_len + (len(solo.tokens) - 1 if div is None else div)
  hit = None if solo.codes is None or run.codes is None else _first_routing_diff(
      solo.codes, run.codes, fed)
  if hit is None:
    return rec
  u, y = hit
  kind, expert = _cause(solo.codes[u, y], run.codes[u, y])
  step = step_of.get(u)
  held = holders(run_steps[step], rid, y, expert) if step in run_steps else {}
  rec.update(routing_position=u, in_prompt=u < solo.prompt_len, layer=y,
             cause=kind, expert=expert, step=step,
             holders=[dict(id=i, pairs=n, domain=requests.get(i, {}).get("domain"),
                           arrival=requests.get(i, {}).get("arrival"))
                      for i, n in sorted(held.items(), key=lambda kv: (-kv[1], kv[0]))])
  return rec


def aggregate(records):
  """Counts over forensics records: by cause, layer, expert and co-request domain (a domain counts
  once per record it appears in among the holders), and the mean solo margin."""
  count = lambda key, absent="-": dict(collections.Counter(
      absent if r.get(key) is None else str(r[key]) for r in records).most_common())
  domains = collections.Counter(d for r in records
                                for d in {h["domain"] for h in r.get("holders", ())})
  margins = [r["solo_margin"] for r in records if r.get("solo_margin") is not None]
  return dict(records=len(records),
              token_divergences=sum(r.get("first_divergence") is not None for r in records),
              cause=count("cause", "numerical"), layer=count("layer"),
              expert=count("expert"), holder_domains=dict(domains.most_common()),
              solo_margin_median=float(np.median(margins)) if margins else None)
