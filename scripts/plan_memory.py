r"""Plans a node before renting it: parameter and KV cache bytes per device for a config on a mesh,
and the largest model (layers, experts) that fits a per-device budget. Needs no accelerator.

  python scripts/plan_memory.py --config=configs/serve_default.py --budget_gib=80 \
      --config.mesh.expert=8 --devices=8
  python scripts/plan_memory.py --config=configs/serve_default.py --budget_gib=16 \
      --config.params_dir=PATH/TO/hf_model --config.mesh.tensor=4 --config.mesh.expert=2 --devices=8

The model comes from the config (with `params_dir`, its architecture from the directory, as the
serving scripts do); slots are `serve.max_num_seqs`. Parameters and cache only: activations,
compiled code and the runtime's buffers need headroom on top.
"""
import json

from absl import flags
from ml_collections import config_flags

from moe_serve import cli
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.parallel import memory

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve_default.py", "Config file.")
_BUDGET = flags.DEFINE_float("budget_gib", 80.0, "Per-device memory budget (GiB).")
_DEVICES = flags.DEFINE_integer("devices", None, "Devices of the planned node (default: the "
                                "product of the config's mesh sizes; needed with a -1 size).")


def main(argv):
  del argv
  cfg = loading.resolve_for(_CONFIG.value, "serve", log=lambda *_: None)
  sizes = [cfg.mesh[a] for a in config_lib.MESH_AXES]
  devices = _DEVICES.value
  if devices is None:
    if -1 in sizes:
      raise config_lib.ConfigError(f"mesh {dict(zip(config_lib.MESH_AXES, sizes))} has a -1 "
                                   "size; pass --devices=N to resolve it")
    devices = sizes[0] * sizes[1] * sizes[2]
  shape = dict(zip(config_lib.MESH_AXES,
                   config_lib.validate_mesh(cfg.mesh, cfg.model, devices)))
  if _BUDGET.value <= 0:
    raise config_lib.ConfigError(f"--budget_gib={_BUDGET.value} must be > 0")
  fit = memory.largest_fitting(cfg.model, shape, cfg.logical_axis_rules, cfg.serve.max_num_seqs,
                               int(_BUDGET.value * memory.GIB))
  gib = lambda b: f"{b / memory.GIB:.3f} GiB"
  print(f"mesh {shape} ({devices} devices), {cfg.serve.max_num_seqs} slots of "
        f"{cfg.model.max_len} positions")
  print(f"per device: params {gib(fit['params_bytes_per_device'])} (of "
        f"{gib(fit['params_bytes'])}), KV cache {gib(fit['cache_bytes_per_device'])} (of "
        f"{gib(fit['cache_bytes'])}); budget {gib(fit['budget_bytes'])}: "
        f"{'fits' if fit['fits'] else 'does NOT fit'}")
  print(f"largest that fits, all else as configured: num_layers={fit['largest_num_layers']} "
        f"(now {cfg.model.num_layers}), num_experts={fit['largest_num_experts']} "
        f"(now {cfg.model.num_experts})")
  print(json.dumps(fit, sort_keys=True))


if __name__ == "__main__":
  cli.run(main)
