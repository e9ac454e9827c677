"""Counts XLA backend compilations, to check that a warmed-up loop never compiles again.

An executable loaded from jax's persistent compilation cache (JAX_COMPILATION_CACHE_DIR) counts
too (jax times the load as a compile): the loop still asked for a program it did not have.
"""
import contextlib

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"
_count = 0
_registered = False


def _listener(event, duration_secs, **kwargs):
  del duration_secs, kwargs
  global _count
  if event == _EVENT:
    _count += 1


def compile_count():
  """Backend compilations so far in this process (since the first call of this function)."""
  global _registered
  if not _registered:
    jax.monitoring.register_event_duration_secs_listener(_listener)
    _registered = True
  return _count


@contextlib.contextmanager
def count_compiles():
  """`with count_compiles() as n: ...; n()` gives the compilations made inside the block."""
  start = compile_count()
  yield lambda: compile_count() - start
