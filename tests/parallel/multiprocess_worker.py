"""One process of the two-process test (test_multiprocess.py starts two of these).

  python -m tests.parallel.multiprocess_worker --coordinator_address=127.0.0.1:PORT \
      --num_processes=2 --process_id=I --out=DIR

Each process has 4 CPU devices (XLA_FLAGS set by the test); together they form one (2, 2, 2)
mesh. In one start-up (jax.distributed and compiles are the expensive part) they run what the
scripts run, as the scripts run it:
- serve (scripts/serve.py's sequence, cost_model clock) into DIR/serve;
- the same engine again, on 3 of the requests, with the `measured` clock into DIR/measured (the
  step durations are agreed each step, so run.serve's record check passes although wall times
  differ);
- a one-setting tiny study (scripts/sweep.py's study.run) into DIR/sweep;
- a records check fed different digests: each process writes the DivergedError it got to
  DIR/diverged<I>.txt (the only file a process other than 0 writes, for the test to read).
"""
import hashlib
import os

from absl import app
from absl import flags
import jax

from configs import study_default
from moe_serve import loading
from moe_serve.experiments import settings, study
from moe_serve.parallel import distributed, spmd
from moe_serve.serving import run

_OUT = flags.DEFINE_string("out", None, "Directory for the results.")
MESH = dict(data=2, expert=2, tensor=2)


def sweep_config():
  """A one-setting tiny study on the (2, 2, 2) mesh."""
  cfg = study_default.get_config("size=tiny")
  cfg.model.num_experts = 8
  # The run's router already in the base config, so serve_config's model is the same model and
  # both load through one compiled init (loading.load) and step (run.make_step_fn).
  cfg.model.router.update(capacity_scope="batch", capacity_factor_prefill=1.0,
                          capacity_factor_decode=1.0)
  cfg.sweep.axes = (("model.router.capacity_scope", ("batch",)),)
  cfg.study.update(repeats=1, target_domains=("add",), quality_per_domain=1)
  cfg.workload.num_requests = 6
  cfg.mesh.update(MESH)
  return cfg


def serve_config():
  """The serving config: the study's one setting (so both share one compiled step,
  run.make_step_fn) serving a workload of its own."""
  cfg = sweep_config()
  cfg.model.router.capacity_scope = "batch"
  cfg = settings.study_config(cfg)
  cfg.workload.update(num_requests=6, seed=1)
  return cfg


def serve(cfg, workdir, log=lambda *_: None):
  """scripts/serve.py's sequence; returns the engine."""
  mesh = run.make_mesh(cfg)
  params, source = loading.load(cfg, mesh, log=log)
  engine = run.build_engine(cfg, params=params, mesh=mesh)
  run.serve(cfg, workdir, engine=engine, log=log, params_source=source)
  return engine


def main(argv):
  del argv
  assert distributed.initialize_from_flags()
  log = distributed.process_log()
  log(f"processes {jax.process_count()}, devices {jax.device_count()} "
      f"({jax.local_device_count()} local)")
  out = _OUT.value
  cfg = serve_config()
  engine = serve(cfg, os.path.join(out, "serve"), log)
  cfg.clock.mode = "measured"
  measured = run.build_engine(cfg, step_fn=engine.step_fn, params=engine.params,
                              cache=engine.cache)
  run.serve(cfg, os.path.join(out, "measured"), engine=measured, log=log,
            requests=run.make_requests(cfg)[:3])  # a few steps suffice: times differ from step 0
  study.run(sweep_config(), os.path.join(out, "sweep"), progress=False, log=log)
  wrong = hashlib.sha256(str(jax.process_index() == 1).encode()).hexdigest()
  try:
    spmd.check_same(wrong, "test records")
  except spmd.DivergedError as e:
    with open(os.path.join(out, f"diverged{jax.process_index()}.txt"), "w",
              encoding="utf-8") as f:
      f.write(str(e))


if __name__ == "__main__":
  app.run(main)
