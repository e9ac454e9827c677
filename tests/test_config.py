"""Each bad config combination stops before any compile, naming the field, value and fix."""
import pytest

from configs import base
from moe_serve import config as config_lib


def _bad(**changes):
  cfg = base.get_config("size=tiny")
  for path, value in changes.items():
    node = cfg
    *parents, leaf = path.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


@pytest.mark.parametrize("changes, message", [
    (dict(model__num_heads=6, model__num_kv_heads=4),
     r"model.num_heads=6 must be divisible by model.num_kv_heads=4; valid num_kv_heads: \[1, 2, 3, 6\]"),
    (dict(model__router__k=5), r"model.router.k=5 exceeds model.num_experts=4; use 1..4"),
    (dict(model__router__kind="switchy"),
     r"model.router.kind='switchy' is not one of \['topk', 'expert_choice', 'soft', 'hash'\]"),
    (dict(model__d_model=0), r"model.d_model=0 must be a positive integer"),
    (dict(model__num_layers=-2), r"model.num_layers=-2 must be a positive integer"),
    (dict(model__max_len=0), r"model.max_len=0 must be a positive integer"),
    (dict(model__moe_every=3), r"model.moe_every=3 is out of range: use 1..model.num_layers=2"),
    (dict(model__head_dim=7), r"model.head_dim=7 must be even"),
    (dict(model__dtype="float8"), r"model.dtype='float8' is not one of"),
    (dict(model__router__capacity_scope="global"), r"model.router.capacity_scope='global'"),
    (dict(model__router__priority="random"), r"model.router.priority='random'"),
    (dict(model__router__dispatch="magic"), r"model.router.dispatch='magic'"),
    (dict(model__router__capacity_factor_decode=0.0),
     r"model.router.capacity_factor_decode=0.0 must be a finite number > 0"),
    (dict(model__router__min_capacity=-1), r"model.router.min_capacity=-1 must be an integer >= 0"),
    (dict(model__router__dispatch="ragged", model__router__capacity_scope="batch"),
     r"dispatch='ragged' is dropless and needs capacity_scope='none'"),
])
def test_validation_error_names_field_value_and_fix(changes, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_bad(**changes))


def test_default_configs_are_valid():
  config_lib.validate(base.get_config())
  config_lib.validate(base.get_config("size=tiny"))


def test_parse_arg_types_and_typos():
  arg = config_lib.parse_arg("size=tiny,n=3,on=false,f=0.5", size="base", n=1, on=True, f=1.0)
  assert (arg.size, arg.n, arg.on, arg.f) == ("tiny", 3, False, 0.5)
  with pytest.raises(config_lib.ConfigError, match="unknown config arg 'sise'"):
    config_lib.parse_arg("sise=tiny", size="base")
  with pytest.raises(config_lib.ConfigError, match="not of type int"):
    config_lib.parse_arg("n=three", n=1)
  with pytest.raises(config_lib.ConfigError, match="size='huge'"):
    base.get_config("size=huge")
