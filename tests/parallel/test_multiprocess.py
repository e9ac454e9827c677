"""Two processes x 4 CPU devices (gloo, jax.distributed) give the same tokens as one process x 8
devices on the same (2, 2, 2) mesh (contract 5), and only process 0 logs.

The test starts both workers itself on a free localhost port and kills them whatever happens.
Logits are bitwise equal (measured, and asserted): the mesh and the partitioned program are the
same, only the collectives' transport differs (gloo between processes vs in-process), and on a
(2, 2, 2) mesh the reductions measured here combine two partial values, whose float sum does not
depend on order. A bigger reduction group could legitimately differ in the last bits; then
compare within the sharded tests' 5e-5 and say so here.
"""
import os
import socket
import subprocess
import sys

import numpy as np

from tests.parallel import multiprocess_worker

TIMEOUT_S = 240
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_workers(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  port = _free_port()
  procs, logs = [], []
  for i in range(2):
    log = open(tmp_path / f"worker{i}.log", "w")  # files, not pipes: a full pipe would block
    logs.append(log)
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "tests.parallel.multiprocess_worker",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
         f"--out={tmp_path}"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs, logs


def test_two_processes_match_one_process(tmp_path):
  procs, logs = _start_workers(tmp_path)
  try:
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for log in logs:
      log.close()
  out = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
  assert codes == [0, 0], f"worker exit codes {codes}; logs:\n" + "\n----\n".join(out)
  assert "processes 2, devices 8 (4 local)" in out[0]
  assert "tokens" not in out[1] and "processes" not in out[1], "process 1 must not log"
  got = np.load(tmp_path / "result.npz")

  want_toks, want_logits = multiprocess_worker.run_workload(multiprocess_worker.config())
  np.testing.assert_array_equal(got["tokens"], want_toks)
  np.testing.assert_array_equal(got["logits"], want_logits)
