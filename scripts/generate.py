r"""Builds the configured MoE model, prefills and decodes a batch through the engine step.

  python scripts/generate.py --config=configs/base.py --config.generate.max_new_tokens=64
"""
from absl import app
from ml_collections import config_flags

from moe_serve import config as config_lib
from moe_serve.experiments import generate_demo

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "Config file.")


def main(argv):
  del argv
  generate_demo.run(config_lib.validate(_CONFIG.value))


if __name__ == "__main__":
  app.run(main)
