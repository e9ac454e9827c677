r"""Builds the configured MoE model, prefills and decodes a batch through the engine step.

  python scripts/generate.py        # the bundled model (models/default) on eval-set prompts
  python scripts/generate.py --config.params_dir=tests/fixtures/hf/qwen3_moe   # an imported one
  python scripts/generate.py --config=configs/base.py --config.generate.max_new_tokens=64
  python scripts/generate.py --config=configs/tiny.py --config.mesh.data=2 --config.mesh.tensor=2

Multi-process (one command per process; see moe_serve/parallel/distributed.py):
  python scripts/generate.py --config=configs/tiny.py \
      --coordinator_address=127.0.0.1:1234 --num_processes=2 --process_id=0
"""
from ml_collections import config_flags

from moe_serve import cli
from moe_serve import loading
from moe_serve.experiments import generate_demo
from moe_serve.parallel import distributed
from moe_serve.parallel import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/generate_default.py",
                                          "Config file.")


def main(argv):
  del argv
  distributed.initialize_from_flags()  # first: before anything touches the devices
  cfg = loading.resolve_for(_CONFIG.value, "generate", log=distributed.process_log())
  mesh = mesh_lib.make_mesh(cfg.mesh, cfg.model)
  generate_demo.run(cfg, log=distributed.process_log(), mesh=mesh)


if __name__ == "__main__":
  cli.run(main)
