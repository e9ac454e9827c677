"""Whole-config checks: `validate` (model and mesh) and `validate_for(cfg, kind)`, the chain of
section checks each kind of run needs."""
from moe_serve.config.checks import ConfigError
from moe_serve.config.mesh import validate_mesh
from moe_serve.config.model import validate_model
from moe_serve.config.serve import validate_serve
from moe_serve.config.study import validate_study
from moe_serve.config.train import validate_train

_SERVING = ("serve", "clock", "workload")
# Per kind: the sections it reads beyond model and mesh, the config file to start from, and the
# section checks it adds to `validate` (model, mesh), in order. A study config is checked as
# "sweep" whether it runs one setting or a grid (each setting is checked alike).
CHAINS = {
    "generate": ((), "configs/generate_default.py", ()),  # a model alone
    "train": (("data", "train"), "configs/train_default.py", (validate_train,)),
    "serve": (_SERVING, "configs/serve_default.py", (validate_serve,)),
    "calibrate": (_SERVING, "configs/serve_default.py", (validate_serve,)),  # both clocks
    "eval": (_SERVING, "configs/serve_default.py", (validate_serve,)),  # the quality runs
    "sweep": (_SERVING + ("study",), "configs/study_default.py", (validate_study,)),
}
KINDS = tuple(CHAINS)


def validate(cfg):
  """Validates a full experiment config (the parts present); returns it for chaining."""
  if "model" not in cfg:
    raise ConfigError("config has no `model` section; start from configs/base.py")
  validate_model(cfg.model)
  if "mesh" in cfg:
    validate_mesh(cfg.mesh, cfg.model)
  return cfg


def validate_for(cfg, kind):
  """Checks everything a `kind` run (one of KINDS) reads from `cfg`, before anything is built;
  returns `cfg`. ConfigError names the first bad field. The mesh against the devices is checked
  where the mesh is made (serving/run.py's make_mesh), and a `params_dir` model's architecture
  after `loading.resolve_for(cfg, kind)` has read it."""
  if kind not in CHAINS:
    raise ValueError(f"validate_for kind {kind!r} is not one of {list(KINDS)}")
  validate(cfg)
  sections, start, checks = CHAINS[kind]
  for section in sections:
    if section not in cfg:
      raise ConfigError(f"config has no `{section}` section, which a {kind} run reads; start "
                        f"from {start}")
  for check in checks:
    check(cfg)
  return cfg
