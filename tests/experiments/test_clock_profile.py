"""The calibration sweep: held-out runs differ from every fit run, and a setting's config is the
base config with only its scope, factor, load and mix changed."""
import pytest

from configs import serve_default, study_default
from moe_serve import config as config_lib
from moe_serve.experiments import clock_profile, settings


def test_validation_settings_are_held_out_of_the_fit():
  for cfg in (serve_default.get_config("size=tiny"), study_default.get_config("size=tiny")):
    fit = clock_profile.fit_settings(cfg)
    held = clock_profile.validation_settings(cfg)
    fitted = {(s.scope, s.factor, s.rate, s.mix) for s in fit}
    assert not fitted & {(s.scope, s.factor, s.rate, s.mix) for s in held}
    assert len({s.name for s in fit + held}) == len(fit + held)
    assert {s.scope for s in fit} >= {"batch", "none"}  # expert rows vary across the fit
    assert len({s.rate for s in fit}) == 2
    shapes = [s for s in fit if s.rows is not None]  # and step shapes vary with the load
    assert shapes and all(len(r) == 3 for s in shapes for r in s.rows)
    config_lib.validate_serve(settings.calibration_config(cfg, shapes[0], 8, "measured"))


def test_a_settings_config_changes_only_what_it_names():
  cfg = study_default.get_config("size=tiny")
  s = clock_profile.validation_settings(cfg)[-1]
  c = settings.calibration_config(cfg, s, 12, "measured")
  config_lib.validate_serve(c)
  r = c.model.router
  assert (r.capacity_scope, r.capacity_factor_decode, r.capacity_factor_prefill) == (
      s.scope, s.factor, s.factor)
  assert c.workload.arrival.rate == s.rate == cfg.study.load  # a study's load is its rate
  assert c.workload.num_requests == 12 and c.clock.mode == "measured"
  assert [d for d, w in c.workload.mix.items() if w > 0] == list(s.mix)
  assert not c.serve.plots
  c.model.router.update(capacity_scope=cfg.model.router.capacity_scope,
                        capacity_factor_decode=cfg.model.router.capacity_factor_decode,
                        capacity_factor_prefill=cfg.model.router.capacity_factor_prefill)
  assert c.model == cfg.model  # the model is otherwise untouched


def test_host_speed_is_measured_over_predicted_per_round():
  feats = lambda rows: {"cost": dict(fixed=1, decode_rows=0, prefill_tokens=0, decode_kv=0,
                                     prefill_kv=0, capacity_pairs=0, expert_rows=rows,
                                     a2a_rows=0)}
  coef = dict(fixed=1e-3, expert_rows=1e-5)
  steps = [feats(100), feats(300)]  # predicted 2 ms and 4 ms
  by_round = [(steps, [{"step_s": 2e-3}, {"step_s": 4e-3}]),
              (steps, [{"step_s": 3e-3}, {"step_s": 6e-3}])]
  assert clock_profile.host_speed(coef, by_round) == pytest.approx([1.0, 1.5])
