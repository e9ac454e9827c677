r"""Rebuilds a sweep's report (results.csv, results.md, plots/) from its finished runs.

  python scripts/report.py --workdir=runs/study [--out_dir=runs/study]
"""
from absl import flags

from moe_serve import cli
from moe_serve.experiments import report

_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the report (default: workdir).")


def main(argv):
  del argv
  print(report.build(_WORKDIR.value, _OUT_DIR.value))


if __name__ == "__main__":
  cli.run(main)
