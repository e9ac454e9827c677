"""The `data` and `train` sections of a training config (configs/train_default.py)."""
from moe_serve.config.checks import ConfigError, positive


def validate_train(cfg):
  """Checks the `data` and `train` sections of a training config (configs/train_default.py)."""
  for section in ("data", "train"):
    if section not in cfg:
      raise ConfigError(f"config has no `{section}` section; start from configs/train_default.py")
  d, t = cfg.data, cfg.train
  if cfg.model.router.dispatch == "sorted":
    raise ConfigError("model.router.dispatch='sorted' is for serving: its loop over the blocks "
                      "in use has a data-dependent length, which reverse-mode autodiff cannot "
                      "differentiate; train with 'gather' or 'einsum' (the parameters serve "
                      "under any backend)")
  positive(d, "data", "batch_size", "seq_len")
  positive(t, "train", "steps", "log_every", "eval_every", "checkpoint_every",
           "eval_examples_per_domain")
  if d.seq_len > cfg.model.max_len:
    raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_len={cfg.model.max_len}; "
                      f"lower data.seq_len or raise model.max_len")
  from moe_serve.data.corpus import DOMAINS  # pylint: disable=import-outside-toplevel
  unknown = sorted(set(d.mixture) - set(DOMAINS))
  if unknown or not d.mixture or any(w < 0 for w in d.mixture.values()) or \
      sum(d.mixture.values()) <= 0:
    raise ConfigError(f"data.mixture={dict(d.mixture)} must map domains of {list(DOMAINS)} "
                      "to weights >= 0 with a positive sum")
  if not 0 < t.lr < 1:
    raise ConfigError(f"train.lr={t.lr!r} must be in (0, 1)")
  if not 0 <= t.warmup_steps < t.steps:
    raise ConfigError(f"train.warmup_steps={t.warmup_steps} must be in [0, train.steps={t.steps})")
  if not t.max_wall_minutes > 0:
    raise ConfigError(f"train.max_wall_minutes={t.max_wall_minutes!r} must be > 0")
  if not 0 <= t.get("stop_step", 0) <= t.steps:
    raise ConfigError(f"train.stop_step={t.stop_step!r} must be in [0, train.steps={t.steps}] "
                      "(0 = run all steps)")
  return cfg
