"""A `jax.profiler` trace of the first N engine steps of a run, after warm-up (so it shows the
steps, not compilation). The trace lands in `<dir>/plugins/profile/<timestamp>/`: an
`*.xplane.pb` for TensorBoard's profile plugin or xprof, and a `*.trace.json.gz` for
https://ui.perfetto.dev (docs/serving.md, Profiling)."""
import glob
import os

import jax


class StepTrace:
  """start() before the run; step() after each engine step stops the trace after `steps` of
  them; stop() ends it (if still running) and returns the trace files written."""

  def __init__(self, directory, steps):
    if steps < 1:
      raise ValueError(f"profile steps={steps} must be >= 1")
    self.directory, self.steps = os.path.abspath(directory), int(steps)
    self.seen, self.active = 0, False

  def start(self):
    os.makedirs(self.directory, exist_ok=True)
    jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
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
    return sorted(glob.glob(os.path.join(self.directory, "plugins", "profile", "*", "*")))
