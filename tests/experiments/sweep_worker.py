"""Subprocess body for the sweep kill test: a sweep whose runs write several files slowly."""
import json
import os
import sys
import time

import ml_collections

from moe_serve.experiments import sweep

PAYLOAD = "x" * 4096


def run_fn(cfg, run_dir):
  assert os.path.basename(run_dir) == sweep.run_name(dict(cfg.point))
  assert not os.listdir(run_dir), "a run starts in an empty directory (a killed try's cleared)"
  finished = os.path.exists(os.path.join(run_dir, sweep.RESULT_FILE))
  with open(os.path.join(os.path.dirname(run_dir), "..", "attempts.log"), "a") as f:
    f.write(("RERUN " if finished else "start ") + os.path.basename(run_dir) + "\n")
  for i in range(3):
    with open(os.path.join(run_dir, f"part{i}.txt"), "w") as f:
      for _ in range(8):
        f.write(PAYLOAD)
        f.flush()
        time.sleep(0.005)
  return {"a": cfg.a, "b": cfg.b, "product": cfg.a * cfg.b}


def main(workdir):
  cfg = ml_collections.ConfigDict({"a": 0, "b": 0, "point": {}})
  axes = {"a": [1, 2, 3], "b": [10, 20, 30]}
  # Each run gets its overrides also under cfg.point, so run_fn can name its final directory.
  wrapped = lambda c, d: run_fn(_with_point(c), d)
  sweep.run_sweep(cfg, axes, workdir, wrapped, progress=False, log=lambda *_: None)
  json.dump({"done": True}, open(os.path.join(workdir, "..", "done.json"), "w"))


def _with_point(cfg):
  cfg.point = {"a": cfg.a, "b": cfg.b}
  return cfg


if __name__ == "__main__":
  main(sys.argv[1])
