"""Training: optax AdamW loop, losses, held-out evaluation, resumable Orbax checkpoints."""
