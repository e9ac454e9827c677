"""A `jax.profiler` trace of the first N engine steps of a run, after warm-up (so it shows the
steps, not compilation). The trace lands in `<dir>/plugins/profile/<timestamp>/`: an
`*.xplane.pb` for TensorBoard's profile plugin or xprof, and a `*.trace.json.gz` for
https://ui.perfetto.dev (docs/serving.md, Profiling). On an object store (`gs://`) the trace is
written to a local temporary directory and uploaded when it stops (files.py)."""
import glob
import os
import shutil
import tempfile

import jax

from moe_serve import files


class StepTrace:
  """start() before the run; step() after each engine step stops the trace after `steps` of
  them; stop() ends it (if still running) and returns the trace files written."""

  def __init__(self, directory, steps):
    if steps < 1:
      raise ValueError(f"profile steps={steps} must be >= 1")
    local = files.is_local(directory)
    self.directory = os.path.abspath(directory) if local else directory
    self.steps, self.seen, self.active = int(steps), 0, False
    self._local = self.directory if local else None
    self._written = []

  def start(self):
    if self._local is None:
      self._local = tempfile.mkdtemp(prefix="moe_serve-profile-")
    os.makedirs(self._local, exist_ok=True)
    jax.profiler.start_trace(self._local, create_perfetto_trace=True)
    self.active = True

  def step(self):
    self.seen += 1
    if self.active and self.seen >= self.steps:
      self.stop()

  def stop(self):
    if self.active:
      jax.effects_barrier()  # let the traced steps finish before the trace closes
      jax.profiler.stop_trace()
      self.active = False
      if self._local != self.directory:  # an object store: upload the whole trace now
        files.upload_tree(self._local, self.directory)
        self._written = [files.join(self.directory, os.path.relpath(p, self._local))
                         for p in self._traces()]
        shutil.rmtree(self._local, ignore_errors=True)
    return self._written if self._local != self.directory else self._traces()

  def _traces(self):
    return sorted(glob.glob(os.path.join(self._local, "plugins", "profile", "*", "*")))
