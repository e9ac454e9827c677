"""The one loading path for parameters: trained or random, on one device or a mesh.

`load(cfg, mesh)` returns the parameters named by `cfg.params_dir` (a model directory, see
moe_serve/bundled.py) restored directly onto their target shardings, or, when `params_dir` is
empty, a random init from `cfg.seed` created in those shardings. The targets come from `mesh` and
`cfg.logical_axis_rules` (or one device when `mesh` is None), never from the devices the
checkpoint was written on, so a model saved on any topology loads on any other. Every script and
library entry point that serves, studies, evaluates or calibrates goes through here.
"""
import os

import jax

from moe_serve import bundled
from moe_serve import config as config_lib
from moe_serve.model import api
from moe_serve.parallel import sharding, steps


def _architecture(model_cfg):
  return {k: v for k, v in model_cfg.to_dict().items() if k != "router"}


def check_architecture(saved, wanted, directory):
  """ConfigError unless two model sections agree on everything but the router (routing is
  what experiments vary)."""
  saved, wanted = _architecture(saved), _architecture(wanted)
  if saved != wanted:
    diff = {k: (saved.get(k), wanted.get(k)) for k in sorted(set(saved) | set(wanted))
            if saved.get(k) != wanted.get(k)}
    raise config_lib.ConfigError(f"model section differs from the model in {directory} "
                                 f"(field: (saved, config)): {diff}; take the model section from "
                                 "the directory (bundled.load_model_config) or clear params_dir")


def abstract_params(model_cfg, mesh=None, rules=None):
  """ShapeDtypeStructs of the parameters with their target shardings (one device if no mesh)."""
  return sharding.plan(model_cfg, mesh, rules).abstract_params


def source(cfg):
  """Where `cfg`'s parameters come from, for logs and summaries (no loading)."""
  if cfg.get("params_dir"):
    return {"kind": "model_dir", "dir": os.path.abspath(cfg.params_dir)}
  return {"kind": "random_init", "seed": int(cfg.seed)}


def load(cfg, mesh=None, log=print):
  """(params, source dict): the parameters `cfg` names, placed on `mesh` (or one device).

  Trained weights are checked against their export digest and for NaN/inf (IntegrityError);
  the directory's architecture must equal `cfg.model` (ConfigError naming the fields).
  """
  rules = cfg.logical_axis_rules if mesh is not None else None
  src = source(cfg)
  if src["kind"] == "random_init":
    log(f"model: random init from seed {cfg.seed} (config params_dir is empty)")
    if mesh is not None:
      return steps.make_init_fn(cfg.model, mesh, rules)(cfg.seed), src
    # Jitted like the sharded init, so the values are the same on one device and on any mesh
    # (an eager init rounds some values differently), and committed like restored parameters.
    init = jax.jit(lambda: api.init_params(cfg.model, jax.random.key(cfg.seed)),
                   out_shardings=sharding.plan(cfg.model).params)
    return init(), src
  directory = cfg.params_dir
  check_architecture(bundled.load_model_config(directory), cfg.model, directory)
  params, step = bundled.restore(directory, abstract_params(cfg.model, mesh, rules))
  src["step"] = step
  log(f"model: {src['dir']} (step {step}, digest verified)")
  return params, src
