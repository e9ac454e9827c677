r"""Rebuilds a sweep's report (results.csv, results.md, plots/, tb/ hparams) from its finished
runs: whatever exists, naming the settings that are missing (e.g. tasks still running).

  python scripts/report.py runs/study [--out_dir=runs/study]
  python scripts/report.py gs://BUCKET/study
  python scripts/report.py --workdir=runs/study
"""
from absl import flags

from moe_serve import cli
from moe_serve import config as config_lib
from moe_serve.experiments import report

_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (or give it as the argument).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the report (default: workdir).")


def main(argv):
  args = argv[1:]
  if len(args) > 1 or (args and _WORKDIR.value) or not (args or _WORKDIR.value):
    raise config_lib.ConfigError(f"give one sweep directory, as the argument or --workdir "
                                 f"(got {args or 'none'}, --workdir={_WORKDIR.value})")
  print(report.build(args[0] if args else _WORKDIR.value, _OUT_DIR.value))


if __name__ == "__main__":
  cli.run(main)
