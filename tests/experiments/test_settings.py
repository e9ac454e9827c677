"""Study settings (experiments/settings.py): a setting's config changes only what the setting
names, and the result's `setting` record reads back as written."""
from configs import study_default
from moe_serve.experiments import settings


def test_the_numerical_arm_is_dropless_with_its_own_shapes():
  cfg = study_default.get_config("size=tiny")
  cfg.study.update(arm="numerical", capacity_factor=1.25, load=20.0, replay="solo")
  c = settings.study_config(cfg.copy_and_resolve_references())
  r, b = c.model.router, c.serve.buckets
  assert (r.capacity_scope, r.capacity_factor_prefill, r.capacity_factor_decode) == (
      "none", 1.25, 1.25)
  assert c.workload.arrival.rate == 20.0 and c.serve.replay_routing
  assert (b.decode_rows, b.prefill_rows, b.chunk_lens) == ((2, 4, 8), (0, 1, 2), (8,))
  assert c.serve.max_num_batched_tokens == 8 + 2 * 8  # the largest step: no chunk is split
  assert c.model.num_experts == cfg.model.num_experts


def test_the_setting_record_round_trips_and_names_every_column():
  cfg = settings.study_config(study_default.get_config("size=tiny"))
  s = settings.StudySetting.of(cfg)
  d = s.to_dict()
  assert list(d) == ["scope", "capacity_factor", "priority", "router", "k", "load", "mode", "arm",
                     "replay", "invariant", "co_domains"]  # result.json's order
  assert settings.StudySetting.from_dict(d) == s and d["co_domains"] is None  # traffic mode
  assert set(settings.COLUMNS) | set(settings.LINE_KEYS) <= set(d)
  old = settings.StudySetting.from_dict({k: v for k, v in d.items() if k != "arm"})
  assert old.arm is None  # a result written before the field existed
