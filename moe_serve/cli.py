"""What every script shares at its entry: flag parsing that names bad config overrides, and user
errors printed as one line instead of a traceback.

  from moe_serve import cli
  if __name__ == "__main__":
    cli.run(main)

A mistyped override (`--config.serve.max_num_seq=8`) stops before anything loads, naming the full
path and the nearest valid names. A ConfigError, TraceError or CheckpointError raised by `main`
(bad input, not a bug) prints `error: ...` on stderr and exits with status 2.

Quiet by default: library INFO logs (Orbax's checkpoint lines, jax's backend probing) are hidden
unless `--verbosity=0` (INFO) or `--verbosity=1` (DEBUG) is given, and jax's "Unable to
initialize backend 'tpu'" is dropped where no TPU runtime (libtpu) is installed. `Progress` draws
one progress line per task (compilation, quality evaluation) for `progress(what, done, total)`.
"""
import importlib.util
import logging
import re
import sys

from absl import app, flags
import tqdm

from moe_serve import checkpoint
from moe_serve import config as config_lib
from moe_serve.serving.stream import workload

USER_ERRORS = (config_lib.ConfigError, workload.TraceError, checkpoint.CheckpointError)
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([A-Za-z0-9_.]+)(?:=|$)")


def _config_spec(argv):
  """The `--config` file spec on the command line, or the flag's default."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return flags.FLAGS["config"].default if "config" in flags.FLAGS else None


def _load_config(spec):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_for_checks", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def bad_override(argv):
  """The message for the first `--config.x.y=...` override that names no field, else None."""
  overrides = [m.group(1) for m in map(_OVERRIDE.match, argv[1:]) if m]
  spec = _config_spec(argv)
  if not overrides or not spec:
    return None
  cfg = _load_config(spec)
  for dotted in overrides:
    message = config_lib.unknown_field(cfg, dotted)
    if message:
      return f"{message} (from the command line override --config.{dotted})"
  return None


def _parse_flags(argv):
  message = None
  try:
    rest = flags.FLAGS(argv)
    if "verbosity" in flags.FLAGS and not flags.FLAGS["verbosity"].present:
      flags.FLAGS.verbosity = -1  # WARNING (absl.app would make an unset verbosity INFO)
    return rest
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = bad_override(argv) or f"could not parse the flags: {type(e).__name__}: {e}"
  except flags.Error as e:
    message = str(e)
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _main_reporting_user_errors(main):
  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  return wrapped


class _NoTpuProbe(logging.Filter):
  def filter(self, record):
    return not record.getMessage().startswith("Unable to initialize backend 'tpu'")


def quiet_logs():
  """No TPU probe line without libtpu (WARNING as the default level is set by _parse_flags)."""
  if importlib.util.find_spec("libtpu") is None:
    logging.getLogger("jax._src.xla_bridge").addFilter(_NoTpuProbe())


class Progress:
  """`progress(what, done, total, note="")`: one tqdm line per `what` on stderr, drawn from its
  first call (so lines appear in the order work starts), closed at done == total or close()."""

  def __init__(self, unit="it", disable=False):
    self._bars, self.unit, self.disable = {}, unit, disable  # disable: draw nothing

  def __call__(self, what, done, total, note=""):
    bar = self._bars.get(what)
    if bar is None:
      bar = self._bars[what] = tqdm.tqdm(total=total, desc=what, unit=self.unit,
                                         dynamic_ncols=True, disable=self.disable)
    if note:
      bar.set_postfix_str(note, refresh=False)
    bar.update(done - bar.n)  # redraws at most every 0.1 s
    if done >= total:
      bar.close()
      del self._bars[what]

  def close(self):
    for bar in self._bars.values():
      bar.close()
    self._bars.clear()


def run(main):
  """`absl.app.run(main)` with the checks and the quiet logs above."""
  quiet_logs()
  app.run(_main_reporting_user_errors(main), flags_parser=_parse_flags)
