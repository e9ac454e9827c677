"""Metrics computed from the engine's event logs and records (never from engine internals)."""
