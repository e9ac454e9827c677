"""The generate demo runs sharded over a (2, 2, 2) mesh, with its rows padded to the data axis.

(That sharded steps give one device's tokens is test_sharded_steps.py's job; this checks the
demo's padding and plumbing, which the unsharded demo test does not reach.)
"""
from configs import tiny
from moe_serve.experiments import generate_demo
from moe_serve.parallel import mesh as mesh_lib


def test_demo_runs_sharded_with_padded_rows():
  cfg = tiny.get_config()
  cfg.generate.update(num_prompts=3, max_new_tokens=4)  # 3 prompts on data=2: one idle row
  cfg.mesh.update(data=2, expert=2, tensor=2)
  lines = []
  figures = generate_demo.run(cfg, log=lines.append, mesh=mesh_lib.make_mesh(cfg.mesh, cfg.model))
  completions = [line for line in lines if "->" in line]
  assert len(completions) == 3 and completions[2].startswith("  'def add(a, b):' -> ")
  assert figures["decode_tok_s"] > 0 and "batch 3" in lines[-1]
