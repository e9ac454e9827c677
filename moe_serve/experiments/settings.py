"""Study settings: a setting turned into a config, and the `setting` record of a study's result.

A setting changes a few parts of a base config: the router's capacity scope and factor
(`set_capacity`), the arrival rate (`set_load`) and the step shapes (`set_buckets`). Both users
make their configs from these steps here:
- the study (`study_config`): a setting is a config whose `study` section says what to change
  (`study.capacity_factor`, `study.load`, `study.arm`, `study.replay`), each one sweep axis;
- the calibration sweep (`calibration_config`, experiments/clock_profile.py): a `ServeSetting`
  (scope, factor, rate, domain mix, step rows) served with a given clock mode.

`StudySetting` is the `setting` dict of a study's result.json (experiments/setting_runner.py
writes it, experiments/report.py reads it back with `from_dict`); `COLUMNS` are its fields as
results.csv's setting columns (in that order) and `LINE_KEYS` the fields the plots draw one line
per value of (experiments/plots.py).
"""
import dataclasses
from typing import NamedTuple


def set_capacity(cfg, scope=None, factor=None):
  """Sets the router's capacity scope and its prefill and decode factors (None: leave it)."""
  r = cfg.model.router
  if factor is not None:
    r.capacity_factor_prefill = float(factor)
    r.capacity_factor_decode = float(factor)
  if scope is not None:
    r.capacity_scope = scope
  return cfg


def set_load(cfg, rate):
  """Sets the workload's arrival rate (requests per second of virtual time)."""
  cfg.workload.arrival.rate = float(rate)
  return cfg


def set_buckets(cfg, buckets, token_budget=False):
  """Updates `serve.buckets` with `buckets` ({decode_rows|prefill_rows|chunk_lens: sizes});
  `token_budget`: the step token budget becomes the largest step (a chunk is never split)."""
  cfg.serve.buckets.update(**{k: tuple(v) for k, v in buckets.items()})
  if token_budget:
    b = cfg.serve.buckets
    cfg.serve.max_num_batched_tokens = max(b.decode_rows) + max(b.prefill_rows) * max(b.chunk_lens)
  return cfg


def study_config(cfg):
  """The study's setting applied to `cfg` (in place; returned): `study.capacity_factor` and
  `study.load`, when not None, set the router's prefill and decode factors and the workload's
  arrival rate; `study.arm` "numerical" makes the setting dropless with the step shapes of
  `study.numerical_buckets`; `study.replay` != "none" builds the engine with routing replay."""
  st = cfg.study
  if st.capacity_factor is not None:
    set_capacity(cfg, factor=st.capacity_factor)
  if st.load is not None:
    set_load(cfg, st.load)
  if st.get("arm", "routing") == "numerical":
    set_capacity(cfg, scope="none")
    set_buckets(cfg, dict(st.numerical_buckets.items()), token_budget=True)
  cfg.serve.replay_routing = st.get("replay", "none") != "none"
  return cfg


@dataclasses.dataclass(frozen=True)
class ServeSetting:
  """One serving run of the calibration sweep: capacity scope and factor, arrival rate, domain
  mix (the domains served; None: the config's) and step shapes (`rows`: (decode_rows,
  prefill_rows) buckets; None: the config's)."""
  name: str
  scope: str
  factor: float
  rate: float
  mix: tuple = None
  rows: tuple = None


def calibration_config(cfg, s, num_requests, mode):
  """A copy of `cfg` serving ServeSetting `s` with `num_requests` requests on a `mode` clock
  (measured | cost_model), without plots or TensorBoard; the model is otherwise untouched."""
  c = cfg.copy_and_resolve_references()
  set_capacity(c, scope=s.scope, factor=s.factor)
  c.workload.num_requests = num_requests
  set_load(c, s.rate)
  if s.mix is not None:
    c.workload.mix = {d: float(d in s.mix) for d in c.serve.domains}
  if s.rows is not None:
    set_buckets(c, dict(decode_rows=s.rows[0], prefill_rows=s.rows[1]))
  c.serve.update(plots=False, tensorboard=False)
  c.clock.mode = mode
  return c


class StudySetting(NamedTuple):
  """What a study run served (its result.json `setting`), read from its applied config."""
  scope: str
  capacity_factor: float
  priority: str
  router: str
  k: int
  load: float
  mode: str
  arm: str
  replay: str
  invariant: bool
  co_domains: str | None  # the co-requests' domains (composition and prefix modes), else None

  @classmethod
  def of(cls, cfg):
    """The setting of a config `study_config` has applied."""
    r, st = cfg.model.router, cfg.study
    return cls(scope=r.capacity_scope, capacity_factor=r.capacity_factor_decode,
               priority=r.priority, router=r.kind, k=r.k, load=cfg.workload.arrival.rate,
               mode=st.mode, arm=st.get("arm", "routing"), replay=st.get("replay", "none"),
               invariant=bool(cfg.model.get("batch_invariant", False)),
               co_domains=st.co_domains if st.mode in ("composition", "prefix") else None)

  def to_dict(self):
    return dict(self._asdict())

  @classmethod
  def from_dict(cls, d):
    """From a result's `setting` dict; a field an older result lacks is None."""
    return cls(**{f: d.get(f) for f in cls._fields})


# results.csv's setting columns, in order (report.py), and the fields that get a line each in the
# plots when they vary (plots.py; `scope` always does).
COLUMNS = ("scope", "capacity_factor", "priority", "router", "load", "mode", "co_domains", "arm",
           "replay", "invariant")
LINE_KEYS = ("scope", "priority", "router", "mode", "co_domains", "arm", "replay", "invariant")
