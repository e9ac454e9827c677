r"""Training config of the bundled default model (models/default, see MODEL.md).

  python scripts/train.py --config=configs/train_default.py --workdir=/tmp/moe_train

Switch/GShard-style routing in training: top-2 of 8 experts, batch-scope capacity factor 1.25,
load-balancing and z-losses. Arg `size=tiny` gives a seconds-long smoke run for tests.
"""
import ml_collections

from configs import base
from moe_serve import config as config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size="base")
  cfg = base.get_config(f"size={arg.size}")
  cfg.model.router.update(kind="topk", k=2, capacity_scope="batch",
                          capacity_factor_prefill=1.25, capacity_factor_decode=1.25,
                          dispatch="gather", lb_loss_weight=0.01, z_loss_weight=1e-3)
  cfg.data = ml_collections.ConfigDict(dict(
      seed=0, batch_size=16, seq_len=128, text_chars=64,
      # Example-count weights. A 64-character text window carries ~13x the loss tokens of a
      # task answer, so text is drawn rarely: ~40% of the loss tokens are still text.
      mixture=dict(add=1.0, reverse=1.0, sort=1.0, lookup=1.0, prose=0.15, code=0.15)))
  cfg.train = ml_collections.ConfigDict(dict(
      steps=5000, lr=2e-3, warmup_steps=100, end_lr_fraction=0.05, weight_decay=0.01,
      b1=0.9, b2=0.98, grad_clip=1.0,
      log_every=10, eval_every=500, checkpoint_every=100, eval_examples_per_domain=64,
      max_wall_minutes=29.0, tensorboard=False,
      stop_step=0))  # > 0: stop there (schedule unchanged), to replay a wall-limited run
  if arg.size == "tiny":
    cfg.model.max_len = 160  # held-out text examples are 128 characters + BOS/EOS
    cfg.data.update(batch_size=2, seq_len=136)
    cfg.train.update(steps=6, warmup_steps=2, log_every=2, eval_every=3, checkpoint_every=2,
                     eval_examples_per_domain=4)
  return cfg
