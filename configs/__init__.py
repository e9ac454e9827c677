"""Experiment configs: `get_config(arg)` files, loaded with `--config=configs/NAME.py:arg`."""
