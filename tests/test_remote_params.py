"""A model directory on an object store (`params_dir=gs://...`, tests/fake_gcs.py: no network)
serves what the same directory on local disk serves: read from a local copy made once."""
import shutil

import jax
import numpy as np

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve import files
from moe_serve import loading

FIXTURE = "tests/fixtures/hf/qwen3_moe"


def _resolved(params_dir):
  cfg = serve_default.get_config("size=tiny")
  cfg.params_dir = params_dir
  return config_lib.validate_serve(loading.resolve(cfg, log=lambda *_: None))


def test_a_gs_model_directory_loads_what_the_local_one_does(fake_gs):
  shutil.copytree(FIXTURE, fake_gs / "bucket" / "qwen")
  local, remote = _resolved(FIXTURE), _resolved("gs://bucket/qwen")
  assert remote.model == local.model and remote.serve.eos_id == local.serve.eos_id
  said = []
  got, src = loading.load(remote, log=said.append)
  want, _ = loading.load(local, log=lambda *_: None)
  assert src["dir"] == "gs://bucket/qwen" and src["kind"] == "hf_dir"
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert loading.tokenizer(remote).encode("moe") == loading.tokenizer(local).encode("moe")
  assert files.local_copy("gs://bucket/qwen") == files.local_copy("gs://bucket/qwen")  # once
