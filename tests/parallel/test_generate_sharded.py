"""The generate demo runs sharded over a (2, 2, 2) mesh (rows padded to the data axis) and
completes every prompt exactly as on a one-device mesh."""
from configs import tiny
from moe_serve.experiments import generate_demo
from moe_serve.parallel import mesh as mesh_lib


def _completions(cfg, mesh):
  lines = []
  generate_demo.run(cfg, log=lines.append, mesh=mesh)
  return [line for line in lines if "->" in line]


def test_demo_sharded_matches_one_device():
  cfg = tiny.get_config()
  cfg.generate.num_prompts = 3  # not a multiple of data=2: exercises the idle-row padding
  cfg.mesh.update(data=2, expert=2, tensor=2)
  sharded = _completions(cfg, mesh_lib.make_mesh(cfg.mesh, cfg.model))
  single = _completions(cfg, mesh_lib.single_device_mesh())
  assert len(sharded) == 3 and sharded == single
