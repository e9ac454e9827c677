r"""The generate demo on the bundled trained model (models/default, MODEL.md), with the first
eval-set prompt of each domain (moe_serve/data/eval_prompts.jsonl):

  python scripts/generate.py
  python scripts/generate.py --config.params_dir=tests/fixtures/hf/qwen3_moe   # an imported model
  python scripts/generate.py --config.generate.prompts=demo --config.generate.max_new_tokens=64

The architecture comes from the model directory (`params_dir`); `--config.params_dir=` (empty)
runs a random init of configs/base.py instead.
"""
from configs import base
from moe_serve import bundled


def get_config(arg=None):
  del arg
  cfg = base.get_config("size=base")
  cfg.params_dir = bundled.DEFAULT_DIR
  cfg.generate.update(prompts="eval", num_prompts=6, max_new_tokens=32, chunk=32)
  return cfg
