"""The one loading path for parameters: trained or random, on one device or a mesh.

`load(cfg, mesh)` returns the parameters named by `cfg.params_dir` (a moe_serve model directory,
moe_serve/bundled.py, or a Hugging Face one, moe_serve/hf) restored directly onto their target
shardings, or, when `params_dir` is
empty, a random init from `cfg.seed` created in those shardings. The targets come from `mesh` and
`cfg.logical_axis_rules` (or one device when `mesh` is None), never from the devices the
checkpoint was written on, so a model saved on any topology loads on any other. Every script and
library entry point that serves, studies, evaluates or calibrates goes through here, after
`resolve_for(cfg, kind)` has taken the architecture from the directory and checked the config.
"""
import os

from moe_serve import bundled, checkpoint, files, hf
from moe_serve import config as config_lib
from moe_serve.data import tokenizer as byte_tokenizer
from moe_serve.hf import tokenizer as hf_tokenizer
from moe_serve.parallel import sharding, steps


# What the config decides even when the parameters come from a directory: how the router is
# served (scope, capacity factors, priority, dispatch: what studies vary), the context length
# the KV cache holds, the compute dtype, and whether the step is batch invariant (how it computes,
# not what it computes). The router's kind, k and top-k normalisation are the model's own and
# come from the directory.
SERVING_CHOICES = ("max_len", "dtype", "batch_invariant")
ROUTER_FROM_MODEL = ("kind", "k", "renormalize") + tuple(config_lib.ROUTER_OPTION_DEFAULTS)


def _architecture(model_cfg):
  """The model section minus the serving choices, as JSON would give it back (tuples as lists)."""
  d = {k: list(v) if isinstance(v, tuple) else v for k, v in model_cfg.to_dict().items()
       if k not in SERVING_CHOICES}
  d["router"] = {k: d["router"].get(k) for k in ROUTER_FROM_MODEL}
  return d


def check_architecture(saved, wanted, directory):
  """ConfigError unless two model sections agree on everything but the serving choices."""
  saved, wanted = _architecture(saved), _architecture(wanted)
  if saved != wanted:
    diff = {k: (saved.get(k), wanted.get(k)) for k in sorted(set(saved) | set(wanted))
            if saved.get(k) != wanted.get(k)}
    raise config_lib.ConfigError(f"model section differs from the model in {directory} "
                                 f"(field: (saved, config)): {diff}; resolve the config first "
                                 "(loading.resolve takes the architecture from the directory) "
                                 "or clear params_dir")


def directory_model_config(directory, max_len=None):
  """The model section of a model directory: a moe_serve export or an HF model."""
  if hf.is_hf_dir(directory):
    return hf.model_config(directory, max_len)
  return bundled.load_model_config(directory)


def resolve(cfg, log=print):
  """With `params_dir` set, takes the model's architecture (with the router's kind, k and
  normalisation) from the directory and keeps the config's serving choices (how the router is
  served, max_len, dtype); an HF model's EOS becomes serve.eos_id.
  Returns `cfg` (changed in place), validated. Without `params_dir`, checks it and returns it."""
  if not cfg.get("params_dir"):
    return config_lib.validate(cfg)
  if not files.isdir(cfg.params_dir):
    raise checkpoint.CheckpointError(f"params_dir {cfg.params_dir} is not a directory")
  directory = files.local_copy(cfg.params_dir, log)  # a gs:// model is read from a local copy
  model = directory_model_config(directory, cfg.model.max_len)
  for key in SERVING_CHOICES:
    model[key] = cfg.model[key]
  router = cfg.model.router
  router.update({k: model.router[k] for k in ROUTER_FROM_MODEL})
  model.router = router
  cfg.model = model
  if hf.is_hf_dir(directory) and "serve" in cfg:
    eos = hf.read_config(directory).get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if eos is not None:
      cfg.serve.eos_id = int(eos)
  log(f"model: architecture from {cfg.params_dir}; capacity, dispatch, max_len and dtype from the "
      "config")
  return config_lib.validate(cfg)


def resolve_for(cfg, kind, log=print):
  """`cfg` checked for a `kind` run (config.KINDS) with its model as `params_dir` has it: the
  config alone first (a bad field is named before the directory is read, or copied from gs://),
  then `resolve`, then the whole chain again against the directory's architecture. Returns `cfg`
  (changed in place). Every script and library entry point that loads parameters starts here."""
  config_lib.validate_for(cfg, kind)
  if not cfg.get("params_dir"):
    return cfg
  return config_lib.validate_for(resolve(cfg, log), kind)


def tokenizer(cfg):
  """The tokenizer of `cfg`'s model: an HF model directory's own (tokenizer.json), else bytes."""
  directory = cfg.get("params_dir")
  directory = directory and files.local_copy(directory)
  if directory and os.path.exists(os.path.join(directory, hf_tokenizer.TOKENIZER_FILE)):
    return hf_tokenizer.HFTokenizer(directory)
  return byte_tokenizer.BYTES


def abstract_params(model_cfg, mesh=None, rules=None):
  """ShapeDtypeStructs of the parameters with their target shardings (one device if no mesh)."""
  return sharding.plan(model_cfg, mesh, rules).abstract_params


def source(cfg):
  """Where `cfg`'s parameters come from, for logs and summaries (no loading; a gs:// directory
  is named as given, and read from its local copy)."""
  given = cfg.get("params_dir")
  directory = given and files.local_copy(given)
  where = os.path.abspath(given) if given and files.is_local(given) else given
  if directory and hf.is_hf_dir(directory):
    return {"kind": "hf_dir", "dir": where, "family": hf.read_config(directory)["model_type"]}
  if directory:
    return {"kind": "model_dir", "dir": where}
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
    # Jitted on one device too, so the values are the same on one device and on any mesh; one
    # per (model, mesh, rules): loading again reuses it (steps.make_init_fn).
    return steps.make_init_fn(cfg.model, mesh, rules)(cfg.seed), src
  directory = files.local_copy(cfg.params_dir, log)
  check_architecture(directory_model_config(directory, cfg.model.max_len), cfg.model, directory)
  if src["kind"] == "hf_dir":
    params = hf.load_params(directory, cfg.model, mesh, rules)
    log(f"model: {src['dir']} (Hugging Face {src['family']}, {cfg.model.param_dtype} weights)")
    return params, src
  params, step = bundled.restore(directory, abstract_params(cfg.model, mesh, rules))
  src["step"] = step
  log(f"model: {src['dir']} (step {step}, digest verified)")
  return params, src
