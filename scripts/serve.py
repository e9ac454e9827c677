r"""Serves a workload through the MoE model on virtual time and writes every log to --workdir.

  python scripts/serve.py --config=configs/serve_default.py --workdir=runs/NAME
  python scripts/serve.py --config=configs/serve_default.py:size=tiny --workdir=runs/tiny \
      --slo_ttft_ms=200 --slo_tpot_ms=50 --slo_e2el_ms=2000 --metric_percentiles=50,90,99 \
      --config.serve.tensorboard=true
  python scripts/serve.py --config=configs/serve_default.py --workdir=runs/mesh \
      --config.mesh.data=2 --config.mesh.expert=2 --config.mesh.tensor=2   # on 8 devices
  python scripts/serve.py --config=configs/serve_default.py --workdir=runs/prof \
      --profile_dir=runs/prof/profile --profile_steps=20   # docs/serving.md, Profiling
  # one command per process (docs/multihost.md); process 0 writes the files:
  python scripts/serve.py ... --coordinator_address=HOST:PORT --num_processes=2 --process_id=I

The whole config is checked before anything is built; the parameters come from
`--config.params_dir` (a model directory, verified against its digest) or a random init.
"""
import time

from absl import flags
from ml_collections import config_flags
import tqdm

from moe_serve import cli
from moe_serve import loading
from moe_serve.metrics import benchmark
from moe_serve.parallel import distributed
from moe_serve.serving import run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve_default.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_SLO_TTFT = flags.DEFINE_float("slo_ttft_ms", None, "TTFT SLO for goodput (ms).")
_SLO_TPOT = flags.DEFINE_float("slo_tpot_ms", None, "TPOT SLO for goodput (ms).")
_SLO_E2EL = flags.DEFINE_float("slo_e2el_ms", None, "E2EL SLO for goodput (ms).")
_PERCENTILES = flags.DEFINE_list("metric_percentiles", ["99"],
                                 "Percentiles in benchmark.json (vLLM's --metric-percentiles).")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "jax.profiler trace of steps after warm-up.")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 20, "Steps traced with --profile_dir.",
                                      lower_bound=1)


def main(argv):
  del argv
  distributed.initialize_from_flags()  # first: before anything touches the devices
  log = distributed.process_log(tqdm.tqdm.write)  # process 0 logs
  cfg = loading.resolve_for(_CONFIG.value, "serve", log=log)  # params_dir's model
  percentiles = benchmark.parse_percentiles(_PERCENTILES.value)
  skipped, counts = [], {}
  # A bad trace stops here, before loading.
  requests = run.make_requests(cfg, skipped=skipped, counts=counts)
  mesh = run.make_mesh(cfg)  # ConfigError if it does not fit the devices
  params, source = loading.load(cfg, mesh, log=log)
  engine = run.build_engine(cfg, params=params, mesh=mesh)
  progress = cli.Progress(disable=not distributed.is_logging_process())  # compiles, requests
  t0 = time.perf_counter()

  def on_step(engine, rec):
    progress("serve (requests)", engine.done, len(requests),
             f"virtual {engine.clock.now:.2f}s wall {time.perf_counter() - t0:.1f}s "
             f"step {rec['step']}")

  run.serve(cfg, _WORKDIR.value, engine=engine, requests=requests, slo_ttft_ms=_SLO_TTFT.value,
            slo_tpot_ms=_SLO_TPOT.value, on_step=on_step, log=log,
            params_source=source, skipped_lines=skipped, slo_e2el_ms=_SLO_E2EL.value,
            percentiles=percentiles, profile_dir=_PROFILE_DIR.value,
            profile_steps=_PROFILE_STEPS.value, progress=progress, trace_counts=counts)
  progress.close()


if __name__ == "__main__":
  cli.run(main)
