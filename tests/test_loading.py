"""The one loading path: a model written on any topology serves on any other, bitwise, through
scripts/serve.py; corrupt, NaN, digest-less or mismatched model directories are refused.

Cross-topology: the bundled parameters placed on an 8-device (1, 8, 1) mesh (experts split 8 ways)
and exported, then served by a 1-device process; and the bundled (1-device) export served on a
(2, 2, 2) mesh. Both give the tokens of the 1-device run of the bundled model, bit for bit.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import serve_default
from moe_serve import bundled, checkpoint
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.parallel import mesh as mesh_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_QUIET = lambda *_: None
# A short workload with small step shapes that divide every mesh below (data 1 or 2).
_SMALL = ["--config.workload.num_requests=6", "--config.workload.output_len.kind=fixed",
          "--config.workload.output_len.value=6", "--config.serve.max_num_seqs=8",
          "--config.serve.buckets.decode_rows=(8,)", "--config.serve.buckets.prefill_rows=(2,)",
          "--config.serve.buckets.chunk_lens=(16,)", "--config.serve.max_num_batched_tokens=40",
          "--config.serve.plots=false"]


def _cfg(params_dir=bundled.DEFAULT_DIR):
  cfg = serve_default.get_config()
  cfg.params_dir = str(params_dir)
  return cfg


def serve_script(workdir, devices, *overrides):
  """Runs scripts/serve.py in a fresh process with `devices` fake CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, "scripts/serve.py", "--config=configs/serve_default.py",
         f"--workdir={workdir}", *overrides]
  return subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=300)


def _tokens(workdir):
  with open(os.path.join(workdir, "requests.jsonl"), encoding="utf-8") as f:
    return [(r["id"], r["status"], r["tokens"]) for r in map(json.loads, f)]


@pytest.fixture(scope="module")
def export_from_8_devices(tmp_path_factory):
  """The bundled parameters restored onto a (1, 8, 1) mesh and exported from there."""
  cfg = _cfg()
  cfg.model = bundled.load_model_config()
  cfg.mesh.update(data=1, expert=8, tensor=1)
  mesh = mesh_lib.make_mesh(cfg.mesh, cfg.model)
  params, _ = loading.load(cfg, mesh, log=_QUIET)
  assert params["block_0"]["moe"]["experts"]["w_up"].sharding.spec[0] == "expert"
  directory = tmp_path_factory.mktemp("from_8_devices") / "model"
  with open(os.path.join(bundled.DEFAULT_DIR, "config.json"), encoding="utf-8") as f:
    full = ml_collections.ConfigDict(json.load(f))
  bundled.export(directory, full, params, 5000)
  return directory


def test_export_from_a_mesh_has_the_same_digest(export_from_8_devices):
  assert bundled.load_digest(export_from_8_devices) == bundled.load_digest(bundled.DEFAULT_DIR)


def test_served_bitwise_across_topologies(export_from_8_devices, tmp_path):
  # The export holds the bundled bytes (the digest test above), so serving it on one device
  # stands for the bundled model there: two runs, not three (suite time).
  runs = {
      "8-device export, 1 device": serve_script(tmp_path / "b", 1, *_SMALL,
                                                f"--config.params_dir={export_from_8_devices}"),
      "bundled, (2,2,2) mesh": serve_script(tmp_path / "c", 8, *_SMALL, "--config.mesh.data=2",
                                            "--config.mesh.expert=2", "--config.mesh.tensor=2"),
  }
  for name, proc in runs.items():
    assert proc.returncode == 0, (name, proc.stderr[-3000:])
  want = _tokens(tmp_path / "b")
  assert [s for _, s, _ in want] == ["finished"] * 6
  assert bundled.load_digest(export_from_8_devices) == bundled.load_digest(bundled.DEFAULT_DIR)
  assert _tokens(tmp_path / "c") == want
  with open(tmp_path / "b" / "summary.json", encoding="utf-8") as f:
    params = json.load(f)["params"]
  assert params == {"kind": "model_dir", "dir": str(export_from_8_devices), "step": 5000}


def _copy_bundled(tmp_path):
  directory = tmp_path / "model"
  shutil.copytree(bundled.DEFAULT_DIR, directory)
  return directory


def test_flipped_bytes_are_refused_by_the_digest(tmp_path):
  directory = _copy_bundled(tmp_path)
  data_file = max(glob.glob(str(directory / "params" / "*" / "default" / "ocdbt.process_0" / "d" /
                                "*")), key=os.path.getsize)
  raw = bytearray(open(data_file, "rb").read())
  middle = len(raw) // 2
  raw[middle:middle + 4096] = bytes(b ^ 0xFF for b in raw[middle:middle + 4096])
  with open(data_file, "wb") as f:
    f.write(raw)
  with pytest.raises(bundled.IntegrityError, match=rf"parameters in {directory}: array \S+ "
                                                   r"differs from the sha256 digest"):
    loading.load(_cfg(directory), log=_QUIET)


def test_nan_weights_are_refused(tmp_path):
  cfg = _cfg()
  cfg.model = bundled.load_model_config()
  params, _ = loading.load(cfg, log=_QUIET)
  params["block_1"]["attn"]["wq"] = params["block_1"]["attn"]["wq"].at[0, 0, 0].set(jnp.nan)
  directory = tmp_path / "nan_model"
  bundled.export(directory, ml_collections.ConfigDict({"model": cfg.model.to_dict()}), params, 1)
  cfg.params_dir = str(directory)
  with pytest.raises(bundled.IntegrityError, match=r"array block_1/attn/wq holds 1 NaN/inf"):
    loading.load(cfg, log=_QUIET)


def test_missing_digest_and_missing_config_are_refused(tmp_path):
  directory = _copy_bundled(tmp_path)
  os.remove(directory / bundled.DIGEST_FILE)
  with pytest.raises(checkpoint.CheckpointError, match=r"params_digest.json is missing"):
    loading.load(_cfg(directory), log=_QUIET)
  os.remove(directory / "config.json")
  with pytest.raises(checkpoint.CheckpointError, match=r"is not a model directory: config.json"):
    loading.load(_cfg(directory), log=_QUIET)


def test_architecture_mismatch_names_the_fields():
  cfg = _cfg()
  cfg.model.d_ff_expert *= 2
  with pytest.raises(config_lib.ConfigError, match=r"differs from the model in .*d_ff_expert"):
    loading.load(cfg, log=_QUIET)


def test_random_init_is_the_same_on_one_device_and_a_mesh(tiny_cfg):
  tiny_cfg.params_dir = ""
  one, source = loading.load(tiny_cfg, log=_QUIET)
  assert source == {"kind": "random_init", "seed": 0}
  tiny_cfg.mesh.update(data=2, expert=2, tensor=2)
  sharded, _ = loading.load(tiny_cfg, mesh_lib.make_mesh(tiny_cfg.mesh, tiny_cfg.model),
                            log=_QUIET)
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(sharded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_finiteness_check_sees_bfloat16():
  """bf16 arrays are not numpy floating types (ml_dtypes kind 'V'): the check must still see
  their NaN, as stored weights of imported or bf16-exported models are bf16."""
  bf16 = jnp.bfloat16
  assert not bundled.all_finite(np.asarray(jnp.array([1.0, jnp.nan], bf16)))
  assert not bundled.all_finite(np.asarray(jnp.array([jnp.inf], jnp.float32)))
  assert bundled.all_finite(np.asarray(jnp.ones(3, bf16))) and bundled.all_finite(np.arange(3))
