"""Determinism of one request served in traffic, against its solo reference (docs/design.md
section 3, Metrics).

A `Trace` is what the engine's tracer saw of one request: the output tokens, their log-probs,
the full next-token log-distribution at each output position, and the kept experts of each
position it fed through the model (`[U, Y, K]`, -1 = dropped).

Comparisons are made over the *common prefix*: outputs before the first divergent position have
the same inputs in both runs, and so does the divergent position itself (its context is equal),
so its distribution is compared too. Routing is compared over the positions fed with identical
inputs: the prompt and the outputs before the divergence.

Axis letters (docs/design.md section 2): U positions a request fed through the model (prompt,
then outputs fed back), Y MoE layers, K choices per token, V vocabulary.
"""
from typing import NamedTuple

import numpy as np


class Trace(NamedTuple):
  """What the engine's tracer recorded of one request (see the module docstring)."""
  prompt_len: int
  tokens: tuple  # output tokens
  logprobs: tuple  # log-prob of each output token, as sampled
  dists: np.ndarray  # [outputs, V] log-probabilities
  routing: np.ndarray  # [U, Y, K] kept expert index, -1 = dropped
  codes: np.ndarray | None = None  # [U, Y, K] replay codes (model/routing.py), if recorded


def first_divergence(a, b):
  """Index of the first differing output token, or None if equal (length counts as a token)."""
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def compare(solo: Trace, run: Trace):
  """Per-repeat determinism figures of `run` against `solo` (a dict of plain numbers)."""
  div = first_divergence(solo.tokens, run.tokens)
  n_common = min(len(solo.tokens), len(run.tokens))
  upto = n_common if div is None else min(div + 1, n_common)  # positions with equal contexts
  p, q = solo.dists[:upto].astype(np.float64), run.dists[:upto].astype(np.float64)
  kl = (np.exp(p) * (p - q)).sum(-1) if upto else np.zeros(0)
  solo_tok = np.asarray(solo.tokens[:upto])
  dlogprob = np.abs(np.take_along_axis(q - p, solo_tok[:, None], 1)[:, 0]) if upto else kl
  fed = solo.prompt_len + (n_common - 1 if div is None else div)  # positions with equal inputs
  fed = min(fed, len(solo.routing), len(run.routing))
  routing_diff = routing_sets_differ(solo.routing[:fed], run.routing[:fed])
  return dict(
      identical_tokens=div is None,
      bitwise=div is None and tuple(solo.logprobs) == tuple(run.logprobs),
      first_divergence=div,
      max_kl=float(kl.max()) if kl.size else 0.0,
      max_abs_dlogprob=float(dlogprob.max()) if dlogprob.size else 0.0,
      routing_diff_fraction=float(routing_diff.mean()) if routing_diff.size else 0.0,
      drop_rate=drop_rate(run.routing),
  )


def routing_sets_differ(a_UxYxK, b_UxYxK):
  """[U, Y] bool: the sets of kept experts differ at (position, layer)."""
  if a_UxYxK.size == 0:
    return np.zeros((0, 0), bool)
  sort = lambda x: np.sort(x, axis=-1)  # -1 (dropped) sorts first, so sets compare as rows
  return (sort(a_UxYxK) != sort(b_UxYxK)).any(-1)


def drop_rate(routing_UxYxK):
  """Fraction of a request's (position, layer, choice) pairs that were dropped."""
  return float((routing_UxYxK < 0).mean()) if routing_UxYxK.size else 0.0


def summarize(solo: Trace, runs):
  """Aggregate over the repeats of one target: unique completions, agreement with solo, worst
  divergences and mean routing difference / drop rate."""
  per = [compare(solo, r) for r in runs]
  divs = [d["first_divergence"] for d in per if d["first_divergence"] is not None]
  return dict(
      repeats=len(runs),
      unique_completions=len({tuple(r.tokens) for r in runs}),
      agree_with_solo=float(np.mean([d["identical_tokens"] for d in per])),
      bitwise_with_solo=float(np.mean([d["bitwise"] for d in per])),
      first_divergence_min=min(divs) if divs else None,
      first_divergence_mean=float(np.mean(divs)) if divs else None,
      max_kl=max(d["max_kl"] for d in per),
      max_abs_dlogprob=max(d["max_abs_dlogprob"] for d in per),
      routing_diff_fraction=float(np.mean([d["routing_diff_fraction"] for d in per])),
      target_drop_rate=float(np.mean([d["drop_rate"] for d in per])),
      solo_drop_rate=drop_rate(solo.routing),
  )


def traffic_drop_rate(step_records, k, num_moe_layers):
  """Dropped (token, choice) pairs over all real tokens of a run's steps (None if not recorded)."""
  drops = [s["drops"] for s in step_records if s.get("drops") is not None]
  if not drops or not num_moe_layers:
    return None
  tokens = sum(s["decode"] + s["prefill_tokens"] for s in step_records if s.get("drops") is not None)
  return float(np.sum(drops) / max(1, tokens * k * num_moe_layers))


def bootstrap_ci(values, num=2000, level=0.95, seed=0):
  """(mean, low, high): the mean of `values` and its percentile bootstrap interval (resampling
  the values, e.g. a study's targets, with replacement; seeded, so reproducible). Nones for no
  values; a single value gives a zero-width interval."""
  x = np.asarray([v for v in values if v is not None], np.float64)
  if not x.size:
    return None, None, None
  means = x[np.random.default_rng(seed).integers(0, x.size, (num, x.size))].mean(1)
  lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return float(x.mean()), float(lo), float(hi)


def aggregate(per_target):
  """Over a study's targets ({id: `summarize` dict}): means, extremes, and bootstrap intervals
  over targets of the unique completions, the fraction of targets with a divergent repeat and
  their mean first divergence position."""
  vals = list(per_target.values())
  mean = lambda k: float(np.mean([v[k] for v in vals]))
  ci = {}
  for name, xs in (("unique_completions", [v["unique_completions"] for v in vals]),
                   ("targets_diverging", [float(v["agree_with_solo"] < 1) for v in vals]),
                   ("first_divergence", [v["first_divergence_mean"] for v in vals])):
    m_, lo, hi = bootstrap_ci(xs)
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
