r"""Compares two serve runs or two sweeps: headline metrics (and a sweep's determinism columns)
side by side with their ratios.

  python scripts/compare.py runs/study runs/study_invariant
  python scripts/compare.py runs/tiny gs://BUCKET/tiny --force

Refuses runs whose config and provenance say a different model or different devices, unless
--force.
"""
from absl import flags

from moe_serve import cli
from moe_serve import config as config_lib
from moe_serve.experiments import compare

_FORCE = flags.DEFINE_bool("force", False, "Compare even with a different model or devices.")


def main(argv):
  if len(argv) != 3:
    raise config_lib.ConfigError(f"give two run directories (RUN_A RUN_B), got {argv[1:]}")
  print(compare.compare(argv[1], argv[2], force=_FORCE.value))


if __name__ == "__main__":
  cli.run(main)
