"""The parameter PartitionSpecs of the tiny config on a (data, expert, tensor) = (2, 2, 2) mesh
match the golden file, so a change to a logical name or rule shows up as a reviewed diff.

Regenerate after an intended change (then read the diff):
  MOE_SERVE_REGEN_GOLDEN=1 python -m pytest -q tests/parallel/test_golden_specs.py
"""
import json
import os
import pathlib

import jax

from moe_serve.parallel import mesh as mesh_lib
from moe_serve.parallel import sharding

GOLDEN = pathlib.Path(__file__).parent / "golden_param_specs_tiny_2x2x2.json"


def _specs(cfg):
  cfg.mesh.update(data=2, expert=2, tensor=2)
  mesh = mesh_lib.make_mesh(cfg.mesh, cfg.model)
  shardings = sharding.param_shardings(cfg.model, mesh, cfg.logical_axis_rules)
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  return {jax.tree_util.keystr(path): [a if a is None or isinstance(a, str) else list(a)
                                       for a in s.spec]
          for path, s in flat}


def test_param_specs_match_golden(tiny_cfg):
  got = _specs(tiny_cfg)
  if os.environ.get("MOE_SERVE_REGEN_GOLDEN"):
    lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(got.items())]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one parameter per line
  want = json.loads(GOLDEN.read_text())
  assert got == want
  # the contract the golden file encodes, stated independently of it
  assert want["['block_0']['moe']['experts']['w_gate']"] == ["expert", None, "tensor"]
  assert want["['block_0']['attn']['wk']"] == [None, "tensor", None]
  assert want["['embedding']"] == ["tensor", None]
