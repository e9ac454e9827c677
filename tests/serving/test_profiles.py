"""Clock profiles: `auto` finds the model's profile (this device's first), a named profile of
another model is an error, and the run says which profile priced its steps."""
import json
import warnings

import pytest

from moe_serve.serving.clock import profiles
from moe_serve.serving import run as run_lib
from tests.helpers.serving import tiny_serve_cfg

_COEF = dict(fixed=1e-3, decode_rows=1e-5, prefill_tokens=2e-5, decode_kv=1e-8, prefill_kv=2e-8,
             capacity_pairs=1e-6, expert_rows=1e-6, a2a_rows=0.0)


def _cfg(tmp_path, profile="auto"):
  cfg = tiny_serve_cfg()
  cfg.params_dir = str(tmp_path)  # searched: <params_dir>/profiles (nothing is loaded here)
  cfg.clock.profile = profile
  return cfg


def _write(tmp_path, name, cfg, scale=1.0, device=None):
  prof = profiles.make(cfg, {k: v * scale for k, v in _COEF.items()}, fit={}, command="test",
                       commit="c", date="2026-11-27")
  if device is not None:
    key = profiles._digest(device)  # pylint: disable=protected-access
    prof.update(device=device, device_key=key)
  path = tmp_path / "profiles" / name
  path.parent.mkdir(exist_ok=True)
  profiles.save(str(path), prof)
  return str(path)


def test_auto_prefers_this_devices_profile_and_ignores_other_models(tmp_path):
  cfg = _cfg(tmp_path)
  other_model = cfg.copy_and_resolve_references()
  other_model.model.d_model *= 2
  _write(tmp_path, "a-other-model.json", other_model, scale=9.0)
  gpu = dict(backend="gpu", kind="NVIDIA H100 80GB HBM3")
  _write(tmp_path, "b-gpu.json", cfg, scale=3.0, device=gpu)
  here = _write(tmp_path, "c-here.json", cfg, scale=2.0)
  # Capacity scope and factors are features, not identity: a profile serves every setting.
  cfg.model.router.update(capacity_scope="batch", capacity_factor_decode=1.5)
  res = profiles.resolve(cfg)
  assert res.path == here and res.same_device
  assert res.coef == pytest.approx({k: 2 * v for k, v in _COEF.items()})
  clock = run_lib.make_clock(cfg)
  assert clock.source == res.describe() and here in clock.source


def test_auto_uses_another_devices_profile_with_a_warning(tmp_path):
  cfg = _cfg(tmp_path)
  _write(tmp_path, "gpu.json", cfg, device=dict(backend="gpu", kind="NVIDIA H100 80GB HBM3"))
  with pytest.warns(UserWarning, match="no profile of this model was made on this device"):
    res = profiles.resolve(cfg)
  assert not res.same_device and "NOT this device" in res.describe()


def test_no_profile_or_another_models_profile_is_an_error(tmp_path):
  cfg = _cfg(tmp_path)
  with pytest.raises(profiles.ProfileError, match="no clock profile for this model.*calibrate"):
    profiles.resolve(cfg)
  other = cfg.copy_and_resolve_references()
  other.serve.record_routing = True  # step options change a step's work: part of the identity
  path = _write(tmp_path, "p.json", other)
  with pytest.raises(profiles.ProfileError, match="another model.*step.record_routing"):
    profiles.resolve(_cfg(tmp_path, profile=path))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # `measured` needs no profile, and looks for none
    cfg.clock.mode = "measured"
    assert profiles.resolve(cfg).path is None


def test_a_malformed_profile_is_named(tmp_path):
  bad = tmp_path / "profiles" / "bad.json"
  bad.parent.mkdir()
  bad.write_text(json.dumps({"format": 1, "coef": {}}))
  with pytest.raises(profiles.ProfileError, match="bad.json is not a format-1 profile"):
    profiles.resolve(_cfg(tmp_path))


def test_a_new_profile_is_written_where_auto_looks(tmp_path):
  """profiles.default_path (scripts/calibrate.py's default) is in search_dirs: next to the
  model, or the repository's profiles/ for a random init."""
  cfg = _cfg(tmp_path)
  prof = profiles.make(cfg, _COEF, fit={}, command="test", commit="c", date="2026-11-27")
  path = profiles.default_path(cfg, prof)
  name = (f"{cfg.model.router.dispatch}-{prof['device']['backend']}-{prof['model_key'][:8]}-"
          f"{prof['device_key'][:8]}.json")
  assert path == str(tmp_path / "profiles" / name)
  assert profiles.found_by_auto(cfg, path)
  cfg.params_dir = ""
  init = profiles.default_path(cfg, prof)
  assert init.startswith(profiles.REPO_DIR + "/init-") and profiles.found_by_auto(cfg, init)
  assert not profiles.found_by_auto(cfg, str(tmp_path / "elsewhere" / "p.json"))
