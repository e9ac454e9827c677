"""AdamW with linear warmup and cosine decay, and global-norm gradient clipping."""
import jax
import optax


def schedule(train_cfg):
  """Learning rate per step: 0 -> lr over `warmup_steps`, then cosine to lr * end_lr_fraction."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.lr, warmup_steps=train_cfg.warmup_steps,
      decay_steps=train_cfg.steps, end_value=train_cfg.lr * train_cfg.end_lr_fraction)


def _decay_mask(params):
  # Norm scales and the (tied) embedding are not decayed, as in most LM recipes.
  def keep(path, _):
    names = [getattr(p, "key", "") for p in path]
    return names[-1] not in ("scale", "embedding")
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(train_cfg):
  """The optax GradientTransformation of a `config.train` section."""
  return optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip),
      optax.adamw(schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                  weight_decay=train_cfg.weight_decay, mask=_decay_mask))
