r"""Engine step time of two (or more) commits on the peer benchmark's shapes, interleaved.

  python benchmarks/ab_steps.py --revs=HEAD~1,HEAD --peer_python=/tmp/hf/bin/python
  python benchmarks/ab_steps.py --revs=b60f2c2,. --hf_dir=DIR --append   # '.' = the working tree

Each revision gets a `git worktree` (under --tmp) and one worker process, a copy of this script
run with `--worker` inside that tree, so that each times its own moe_serve. The workers are
called in turn: each of `--rounds` rounds (peer.py's flag, 5) times `--decode_steps` decode
steps, then `--prefill_steps` prefill steps, in every worker, so that load from other processes
on a shared machine hits every revision alike. The model is benchmarks/peer.py's tiny Mixtral (its HF directory: --hf_dir, or
built by peer.py's HF worker with --peer_python), served as peer.py serves it (64 slots, `none`
scope, --dispatch). Shapes: a decode step of 64 rows at positions 100 (kv_len 128 of 256), and a
prefill step of 8 chunks x 64 tokens with 64 idle decode rows (peer.py's own runs now default to
16 prefill rows per step; these shapes stay fixed so that figures compare across revisions). A
step's time is what the engine times: the step, the sampler and the copy of tokens and kept pairs
to the host. The table gives
the median step time per revision and the median over rounds of its ratio to the first revision.
Worktrees are kept for the next run; `git worktree remove PATH` deletes one.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

import common  # benchmarks/common.py (the script's folder is on sys.path)

if "--worker" in sys.argv:  # a worker times the tree it runs in, with that tree's peer.py
  sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import peer  # noqa: E402  (its flags --rounds, --peer_python and --append serve here too)

FLAGS = flags.FLAGS
_REVS = flags.DEFINE_list("revs", ["HEAD~1", "."], "Commits to compare; '.' is the working tree.")
_DECODE = flags.DEFINE_integer("decode_steps", 10, "Decode steps per worker per round.")
_PREFILL = flags.DEFINE_integer("prefill_steps", 3, "Prefill steps per worker per round.")
_DISPATCH = flags.DEFINE_string("dispatch", "sorted", "Dispatch backend (scope none).")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "The tiny Mixtral's HF directory (peer.py's).")
_TMP = flags.DEFINE_string("tmp", tempfile.gettempdir(), "Where the worktrees go.")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: time steps on stdin's commands.")

HERE = os.path.dirname(os.path.abspath(__file__))


def worker():
  """Builds a warmed-up engine and answers 'decode N' / 'prefill N' with the median ms."""
  import jax  # pylint: disable=import-outside-toplevel
  from moe_serve.model import parts  # pylint: disable=import-outside-toplevel
  from moe_serve.serving.loop import sampling  # pylint: disable=import-outside-toplevel
  engine = peer.moe_engine(_HF_DIR.value, "none", _DISPATCH.value, 64)
  rng = np.random.default_rng(0)
  n = 64
  decode = parts.StepBatch(parts.decode_part(rng.integers(3, 512, n), np.arange(n),
                                             np.full(n, 100), np.arange(n)),
                           parts.empty_part(0, 64))
  prefill = parts.StepBatch(parts.empty_part(n, 1),
                            parts.chunk_part(rng.integers(3, 512, (8, 64)), np.arange(8),
                                             np.zeros(8), np.full(8, 64), np.arange(8)))
  batches = {"decode": (decode, 128), "prefill": (prefill, 64)}

  def timed(batch, kv_len, steps):
    samp = sampling.SamplingBatch.padding(batch.decode.tokens_BxL.shape[0],
                                          batch.prefill.tokens_BxL.shape[0])
    out = []
    for _ in range(steps):
      t0 = time.perf_counter()
      logits, engine.cache, aux = engine._step(batch, kv_len)  # pylint: disable=protected-access
      jax.device_get((sampling.sample(logits["decode"], logits["prefill"], samp),
                      aux.get("kept_pairs")))
      out.append(time.perf_counter() - t0)
    return float(np.median(out)) * 1e3

  for what in batches:  # warm-up
    timed(*batches[what], 2)
  print("ready", flush=True)
  for line in sys.stdin:
    what, steps = line.split()
    print(json.dumps(timed(*batches[what], int(steps))), flush=True)


def _tree(rev):
  """A checkout of `rev`: the working tree for '.', else a (reused) detached worktree."""
  if rev == ".":
    return os.path.dirname(HERE), "working tree"
  sha = subprocess.check_output(["git", "rev-parse", "--short=9", rev], cwd=HERE, text=True).strip()
  path = os.path.join(_TMP.value, f"moe_serve-ab-{sha}")
  if not os.path.exists(path):
    subprocess.check_call(["git", "worktree", "add", "-q", "--detach", path, sha], cwd=HERE)
  return path, sha


def _hf_dir():
  if _HF_DIR.value:
    return _HF_DIR.value
  if not FLAGS["peer_python"].present:
    raise app.UsageError("give --hf_dir (a directory peer.py's HF worker built) or --peer_python")
  path = os.path.join(_TMP.value, "moe_serve-ab-tiny-mixtral")
  if not os.path.exists(os.path.join(path, "config.json")):
    hf = peer.HFWorker(FLAGS.peer_python)
    hf.ask(cmd="build", dir=path, seed=0, config=peer.MIXTRAL)
    hf.close()
  return path


def main(argv):
  del argv
  if _WORKER.value:
    return worker()
  hf_dir = _hf_dir()
  workers = {}
  for rev in _REVS.value:
    path, label = _tree(rev)
    env = dict(os.environ, PYTHONPATH=path)
    cmd = [sys.executable, os.path.join(path, "benchmarks", "ab_steps.py"), "--worker",
           f"--hf_dir={hf_dir}", f"--dispatch={_DISPATCH.value}"]
    if not os.path.exists(cmd[1]):  # an older commit without this script: run this one there
      cmd[1] = os.path.abspath(__file__)
    proc = subprocess.Popen(cmd, cwd=path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    while (line := proc.stdout.readline().strip()) != "ready":
      if not line and proc.poll() is not None:
        raise RuntimeError(f"the worker for {rev} ({path}) died before it was ready")
    workers[label] = proc
  ms = {k: {"decode": [], "prefill": []} for k in workers}
  for _ in range(FLAGS.rounds):
    for what, steps in (("decode", _DECODE.value), ("prefill", _PREFILL.value)):
      for label, proc in workers.items():
        proc.stdin.write(f"{what} {steps}\n")
        proc.stdin.flush()
        ms[label][what].append(json.loads(proc.stdout.readline()))
  for proc in workers.values():
    proc.stdin.close()
    proc.wait(timeout=60)
  first = next(iter(ms))
  rows = []
  for label, v in ms.items():
    row = [label]
    for what in ("decode", "prefill"):
      ratio = np.median(np.array(v[what]) / np.array(ms[first][what]))
      row += [f"{np.median(v[what]):.1f}", f"{ratio:.3f}"]
    rows.append(row)
  desc = (f"tiny Mixtral (peer.py), none/{_DISPATCH.value}, 64 slots; decode step 64 rows at kv_len 128, prefill step "
          f"8 x 64 tokens + 64 idle rows; step + sampler + host copy; {FLAGS.rounds} interleaved "
          f"rounds of {_DECODE.value} decode and {_PREFILL.value} prefill steps per revision.")
  common.report("Step time by revision", desc,
                ["revision", "decode ms", "vs first", "prefill ms", "vs first"], rows,
                append_to=os.path.join(HERE, "RESULTS.md") if FLAGS.append else None)


if __name__ == "__main__":
  app.run(main)
