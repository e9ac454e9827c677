"""Every result says what produced it (moe_serve/provenance.py): the fields are present and true."""
import datetime
import hashlib
import json
import os
import subprocess

import jax
import jaxlib
import ml_collections

from moe_serve import provenance
from moe_serve.experiments import sweep

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args):
  return subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True,
                        check=True).stdout.strip()


def test_fields_are_present_and_true(tiny_cfg):
  before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
  p = provenance.provenance(tiny_cfg)
  assert p["jax"] == jax.__version__ and p["jaxlib"] == jaxlib.__version__
  assert p["backend"] == jax.default_backend() == "cpu"
  assert p["device_kind"] == jax.devices()[0].device_kind
  assert p["device_count"] == jax.device_count() == 8  # tests/conftest.py's fake devices
  assert p["local_device_count"] == 8 and p["process_count"] == 1
  assert p["git_commit"] == _git("rev-parse", "HEAD")  # the tests run in a checkout
  assert p["git_dirty"] == bool(_git("status", "--porcelain", "--untracked-files=no"))
  assert p["config_hash"] == provenance.config_hash(tiny_cfg)
  started = datetime.datetime.fromisoformat(p["started"])
  assert before <= started <= datetime.datetime.now(datetime.timezone.utc)
  json.dumps(p)  # JSON-ready


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
  assert provenance.git_state(str(tmp_path)) == ("unknown", "unknown")


def test_config_hash_follows_the_values_and_keeps_the_sweep_hash(tiny_cfg):
  other = tiny_cfg.copy_and_resolve_references()
  other.model.num_experts = 8
  assert provenance.config_hash(other) != provenance.config_hash(tiny_cfg)
  # sweep.json holds this hash: it must not change, or old sweeps could not resume.
  cfg = ml_collections.ConfigDict({"a": 1, "sweep": {"axes": ()}})
  old = hashlib.sha1(json.dumps({"a": 1}, sort_keys=True).encode()).hexdigest()[:12]
  assert sweep.config_hash(cfg) == old


def test_sweep_result_carries_provenance(tmp_path):
  cfg = ml_collections.ConfigDict({"study": {"load": 0.0}})
  sweep.run_sweep(cfg, {"study.load": [1.0]}, str(tmp_path), lambda c, d: {},
                  progress=False, log=lambda *_: None)
  record = sweep.load_results(str(tmp_path))[0]
  assert record["provenance"]["git_commit"] == _git("rev-parse", "HEAD")
  assert record["provenance"]["config_hash"] == provenance.config_hash(
      sweep.apply_overrides(cfg, {"study.load": 1.0}))
