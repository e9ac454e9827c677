"""The bundled default model: a trained MoE committed under models/default (see MODEL.md).

`load_default()` returns (config, params); every experiment starts from it unless told otherwise.
The directory holds `config.json` (the full training config) and `params/` (an Orbax checkpoint
of the parameters only, float32).
"""
import json
import os

import jax
import ml_collections

from moe_serve import checkpoint
from moe_serve import config as config_lib
from moe_serve.model import api

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "models", "default")


def export(directory, cfg, params, step):
  """Writes `cfg` and `params` as a bundled model directory (replacing the params at `step`)."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    f.write(cfg.to_json(indent=2, sort_keys=True) + "\n")
  mngr = checkpoint.manager(os.path.join(directory, "params"), max_to_keep=1)
  checkpoint.save(mngr, int(step), params, force=True)


def load_config(directory=DEFAULT_DIR):
  """The config a bundled model was trained with (validated)."""
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise checkpoint.CheckpointError(f"no bundled model at {directory} ({path} is missing); "
                                     "train one with scripts/train.py --export_dir")
  with open(path, encoding="utf-8") as f:
    raw = json.load(f)
  # Sharding rules are not part of the trained model: use today's, so new logical axis names
  # (added to configs/base.py after training) have their mesh mapping.
  from configs import base  # pylint: disable=import-outside-toplevel
  raw["logical_axis_rules"] = base.LOGICAL_AXIS_RULES
  return config_lib.validate(ml_collections.ConfigDict(raw))


def load(directory=DEFAULT_DIR, **router_overrides):
  """(config, params) of the bundled model in `directory`.

  `router_overrides` replace `config.model.router` fields, e.g. `capacity_scope="none"` to serve
  dropless; the returned config is validated after the change.
  """
  cfg = load_config(directory)
  cfg.model.router.update(router_overrides)
  config_lib.validate(cfg)
  abstract = jax.eval_shape(lambda: api.init_params(cfg.model, jax.random.key(0)))
  mngr = checkpoint.manager(os.path.join(directory, "params"), create=False)
  return cfg, checkpoint.restore(mngr, abstract)


def load_default(**router_overrides):
  """(config, params) of the committed default model, models/default."""
  return load(DEFAULT_DIR, **router_overrides)


def params_for(cfg, log=print):
  """The parameters named by `cfg.params_dir` (a bundled model directory), or a random init
  from `cfg.seed` when it is empty. The directory's architecture must equal `cfg.model`; only
  the router section may differ (routing is what experiments vary)."""
  if not cfg.get("params_dir"):
    log(f"model: random init from seed {cfg.seed} (config params_dir is empty)")
    return api.init_params(cfg.model, jax.random.key(cfg.seed))
  saved_cfg, params = load(cfg.params_dir)
  arch = lambda m: {k: v for k, v in m.to_dict().items() if k != "router"}
  saved, wanted = arch(saved_cfg.model), arch(cfg.model)
  if saved != wanted:
    diff = {k: (v, wanted.get(k)) for k, v in saved.items() if wanted.get(k) != v}
    raise config_lib.ConfigError(f"model section differs from the model in {cfg.params_dir} "
                                 f"(field: (saved, config)): {diff}")
  log(f"model: {cfg.params_dir} (trained; see MODEL.md)")
  return params
