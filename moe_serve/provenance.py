"""What produced a result: software versions, devices, code commit, config and start time.

Every `summary.json` (scripts/serve.py) and sweep `result.json` carries `provenance(cfg)`, since
figures are comparable only at the same versions and hardware (BUILD.md):
  jax, jaxlib, python: versions; backend (cpu|gpu|tpu), device_kind, device_count,
  local_device_count, process_count; git_commit and git_dirty (tracked files changed) of the
  checkout this package runs from, "unknown" outside a git checkout; config_hash (config_hash
  below); started (UTC, ISO 8601).
"""
import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess

import jax
import jaxlib

UNKNOWN = "unknown"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def config_hash(cfg, exclude=()):
  """A short hash of `cfg`'s values but the top-level sections in `exclude`."""
  d = cfg.to_dict()
  for key in exclude:
    d.pop(key, None)
  return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _git(args, cwd):
  return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                        check=True).stdout.strip()


@functools.lru_cache(maxsize=None)
def git_state(directory=_PACKAGE_DIR):
  """(commit, dirty) of the git checkout holding `directory`; ("unknown", "unknown") outside
  one, or without git."""
  try:
    commit = _git(["rev-parse", "HEAD"], directory)
    dirty = bool(_git(["status", "--porcelain", "--untracked-files=no"], directory))
  except (OSError, subprocess.SubprocessError):
    return UNKNOWN, UNKNOWN
  return commit, dirty


def commit_label(length=None):
  """This checkout's commit (its first `length` characters), '+dirty' with uncommitted changes:
  how benchmark sections and clock profiles name the code that measured them."""
  head, dirty = git_state()
  return head[:length] + ("+dirty" if dirty is True else "")


def cpu_name():
  """The processor's model name (/proc/cpuinfo), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or UNKNOWN


def provenance(cfg=None, started=None, directory=_PACKAGE_DIR):
  """The provenance dict (module docstring); `started` defaults to now."""
  started = started or datetime.datetime.now(datetime.timezone.utc)
  commit, dirty = git_state(directory)
  devices = jax.devices()
  return dict(
      jax=jax.__version__, jaxlib=jaxlib.__version__, python=platform.python_version(),
      backend=jax.default_backend(), device_kind=devices[0].device_kind,
      device_count=jax.device_count(), local_device_count=jax.local_device_count(),
      process_count=jax.process_count(), git_commit=commit, git_dirty=dirty,
      config_hash=config_hash(cfg) if cfg is not None else None,
      started=started.isoformat(timespec="seconds"))
