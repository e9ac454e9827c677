"""Makes a clock profile for a config's model on this device, and validates it on whole runs.

`fit_settings`: a short sweep around the config (its own capacity scope and factor, `batch` at
factors 1.0 and 2.0, and dropless `none`, each at half and twice the config's arrival rate, plus
its own scope and `none` with step shapes that follow the load, `shape_buckets`), served with the
`measured` clock; every step's features and wall time go into one fit (serving/clock/calibrate.py).
`validation_settings`: held-out runs the fit never saw (other loads, scopes, factors and domain
mixes), served with the `measured` clock and with the new profile's `cost_model` clock on the same
engine, and compared on throughput and TTFT/TPOT/E2EL p50/p99.

A shared host's speed drifts by tens of percent over minutes, so every measured run is repeated
in rounds that visit all settings, fit and held-out, in turn (`measure`): drift then hits every
setting and the fit alike instead of posing as a difference between them. Validation compares the
cost_model run with the median of a setting's measured rounds, and reports how far the measured
rounds lie from that median: the noise floor any clock is judged against.

Each run is a normal serving run (run.serve) with its files under WORKDIR/<fit|validate>/<name>;
a setting's config is experiments/settings.calibration_config's, and its engine is built with the
clock it runs on.
"""
import datetime
import os

from moe_serve import provenance
from moe_serve.experiments import settings
from moe_serve.serving import run
from moe_serve.serving.clock import calibrate, profiles
from moe_serve.serving.clock import running as clock_lib

_Setting = settings.ServeSetting  # one run of the sweep


def _own(cfg):
  r = cfg.model.router  # dropless `none` has no factor: 1.0 stands for any
  return r.capacity_scope, 1.0 if r.capacity_scope == "none" else float(r.capacity_factor_decode)


def _rate(cfg):
  """The config's arrival rate: a study's `study.load`, else the workload's."""
  return float(cfg.get("study", {}).get("load") or cfg.workload.arrival.rate)


def shape_buckets(cfg):
  """Decode and prefill row buckets at a third, two thirds and all of the config's largest
  (e.g. 8/16/24 and 0/1/2 for the study): steps whose shape follows the load, so that the
  per-row features vary apart from the fixed cost (with one bucket they never do)."""
  b = max(cfg.serve.buckets.decode_rows)
  p = max(cfg.serve.buckets.prefill_rows)
  return (tuple(sorted({max(1, b // 3), max(1, 2 * b // 3), b})),
          tuple(sorted({0, p // 2, p})))


def fit_settings(cfg):
  rate = _rate(cfg)
  # Two `batch` factors set expert rows apart from capacity ranking (both grow with scope).
  scopes = list(dict.fromkeys([_own(cfg), ("batch", 1.0), ("batch", 2.0), ("none", 1.0)]))
  # Shapes that follow the load, at the config's scope and dropless: expert rows then grow with
  # the tokens at two different rates, which sets them apart from the per-token costs.
  shaped = dict.fromkeys([_own(cfg), ("none", 1.0)])
  return [_Setting(f"{s}-cf{f:g}-rate{rate * x:g}", s, f, rate * x)
          for s, f in scopes for x in (0.5, 2.0)] + [
              _Setting(f"{s}-cf{f:g}-rate{rate * x:g}-shapes", s, f, rate * x,
                       rows=shape_buckets(cfg)) for s, f in shaped for x in (0.5, 2.0)]


def validation_settings(cfg):
  rate = _rate(cfg)
  scope, factor = _own(cfg)
  domains = tuple(cfg.serve.domains)
  return [_Setting(f"{scope}-cf{factor:g}-rate{rate:g}", scope, factor, rate),
          _Setting(f"batch-cf1.25-rate{rate * 1.5:g}", "batch", 1.25, rate * 1.5),
          _Setting(f"sequence-cf1-rate{rate:g}-{domains[-1]}-only", "sequence", 1.0, rate,
                   (domains[-1],))]


class Runner:
  """Serves settings on engines built once per (scope, factor, buckets, clock mode), sharing the
  parameters (and, through run.make_step_fn, the compiled step of each model config)."""

  def __init__(self, cfg, params, params_source, mesh, workdir, num_requests, log):
    self.cfg, self.params, self.source, self.mesh = cfg, params, params_source, mesh
    self.workdir, self.num_requests, self.log = workdir, num_requests, log
    self._engines = {}

  def serve(self, setting, part, mode, clock=None, tag="", num_requests=None):
    """(summary, RunLog) of `setting` in clock `mode` (a given Clock replaces the config's), with
    `num_requests` requests (default the runner's)."""
    c = settings.calibration_config(self.cfg, setting, num_requests or self.num_requests, mode)
    engine = self._engine(setting, c, clock)
    quiet = lambda *a, **k: None
    summary, log = run.serve(c, os.path.join(self.workdir, part, f"{setting.name}-{mode}{tag}"),
                             engine=engine, requests=run.make_requests(c),
                             params_source=self.source, log=quiet)
    self.log(f"  {part} {setting.name} ({mode}{tag}): {len(log.steps)} steps, "
             f"{summary['output_throughput']:.0f} output tok/s of virtual time")
    return summary, log

  def _engine(self, setting, c, clock):
    """The engine serving `setting` (config `c`) on `clock`: built for a given clock, else the
    config's clock on the engine kept for that setting and clock mode."""
    if clock is not None:
      return run.build_engine(c, params=self.params, mesh=self.mesh, clock=clock)
    key = (setting.scope, setting.factor, setting.rows, c.clock.mode)
    if key not in self._engines:
      self._engines[key] = run.build_engine(c, params=self.params, mesh=self.mesh)
    return self._engines[key]


def measure(cfg, runner, rounds, fit=True, validate=True, validate_requests=None):
  """Serves the fit settings and the held-out settings with the measured clock, `rounds` times,
  all interleaved: round i serves every fit setting, then every held-out one. Returns (fit steps,
  fit wall records, {held-out setting name: [summary per round]}, [(steps, wall) of all the
  runs of each round]: see `host_speed`)."""
  steps, wall, by_round = [], [], []
  held = {s.name: [] for s in validation_settings(cfg)} if validate else {}
  for i in range(rounds):
    runner.log(f"round {i + 1}/{rounds}: host load average {_load_average()}")
    round_steps, round_wall = [], []
    for s in fit_settings(cfg) if fit else ():
      _, log = runner.serve(s, "fit", "measured", tag=f"-round{i}")
      steps += log.steps
      wall += log.wall
      round_steps += log.steps
      round_wall += log.wall
    for s in validation_settings(cfg) if validate else ():
      summary, log = runner.serve(s, "validate", "measured", tag=f"-round{i}",
                                  num_requests=validate_requests)
      held[s.name].append(summary)
      round_steps += log.steps
      round_wall += log.wall
    by_round.append((round_steps, round_wall))
  return steps, wall, held, by_round


def host_speed(coef, by_round):
  """Per round, measured / predicted time of all its steps: how slow the host was in that round
  relative to the profile (1.0: as fitted; a shared host swings between rounds)."""
  return [float(sum(w["step_s"] for w in wall) /
                clock_lib.predict(coef, calibrate.step_features(steps)).sum())
          for steps, wall in by_round if steps]


def _load_average():
  """The host's 1-minute load average (other processes competing for the cores), or None."""
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def make_profile(cfg, steps, wall, holdout_every=4, command="", **fit_facts):
  """The profile dict fitted on measured steps (`fit_facts` go into its `fit` record)."""
  coef, stats = calibrate.fit_steps(steps, wall, holdout_every)
  stats.update(settings=[s.name for s in fit_settings(cfg)], **fit_facts)
  return profiles.make(cfg, coef, stats, command, provenance.commit_label(),
                       datetime.date.today().isoformat())


def validate(cfg, runner, prof, path, measured, num_requests=None):
  """Serves each held-out setting once with the profile's cost_model clock and compares it with
  that setting's measured rounds (`measured`, from `measure`); returns one row per setting:
  {setting, metrics: {label: (measured median over rounds, cost_model, error)}, noise: {label:
  the largest |deviation| of one measured round from that median}}."""
  rows = []
  for s in validation_settings(cfg):
    clock = clock_lib.Clock(settings.calibration_config(cfg, s, 1, "cost_model").clock,
                            prof["coef"], path)
    virtual, _ = runner.serve(s, "validate", "cost_model", clock, num_requests=num_requests)
    metrics, noise = calibrate.compare_to_rounds(measured[s.name], virtual)
    rows.append(dict(setting=s.name, metrics=metrics, noise=noise))
  return rows


def validation_table(rows):
  """Markdown: one row per held-out run and metric."""
  fmt = lambda v: "n/a" if v is None else f"{v:.1f}"
  pct = lambda v: "n/a" if v is None else f"{v:+.1%}"
  lines = ["| held-out run | metric | measured (median of rounds) | cost_model | error | "
           "measured rounds vs their median |", "|---|---|---|---|---|---|"]
  for r in rows:
    for label, (a, b, err) in r["metrics"].items():
      noise = r["noise"].get(label)
      lines.append(f"| {r['setting']} | {label} | {fmt(a)} | {fmt(b)} | {pct(err)} | "
                   f"{'n/a' if noise is None else f'up to {noise:.1%}'} |")
  return "\n".join(lines)
