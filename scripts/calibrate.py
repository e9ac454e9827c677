r"""Makes the cost_model clock's profile for a config's model on this device, and validates it.

  python scripts/calibrate.py --config=configs/serve_default.py --workdir=runs/calibrate
  python scripts/calibrate.py --config=configs/serve_default.py --workdir=runs/calibrate --validate
  python scripts/calibrate.py --config=configs/study_default.py --workdir=runs/cal_study --validate
  python scripts/calibrate.py --config=configs/serve_default.py --workdir=runs/val \
      --profile=profiles/PROFILE.json --validate        # validate an existing profile, no fit

Serves a short sweep around the config (its scope and factor, `batch` 1.0 and 2.0, dropless `none`,
each at half and twice its arrival rate, and its scope and `none` with row buckets at 1/3, 2/3 and
all of its own; --num_requests each) with the measured clock, fits the step-cost coefficients
(docs/serving.md, Clock), and writes the profile: to --out, by default where
serving/clock/profiles.py
says (profiles.default_path: <params_dir>/profiles/<dispatch>-<backend>-<keys>.json, or
profiles/init-... for a random init), where `clock.profile=auto` finds it.

--validate also serves held-out runs (other loads, scopes, factors, mixes; --validate_requests
each) and then each once with the new profile's cost_model clock, and prints, stores in the
profile, and writes to WORKDIR/validation.md the errors of throughput and TTFT/TPOT/E2EL p50/p99
against the median of the measured rounds, next to how far those rounds lie from it (the noise
floor).

Every measured run is repeated in --rounds rounds, each serving every fit setting and then every
held-out one, so that a shared host's drift hits the fit and the held-out runs alike. On a mesh and
multi-process like scripts/serve.py (every process takes the slowest process's wall time for each
step, parallel/spmd.py); process 0 writes.
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

from moe_serve import cli
from moe_serve import files
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.experiments import clock_profile
from moe_serve.parallel import distributed
from moe_serve.serving import run
from moe_serve.serving.clock import profiles

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve_default.py", "Config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", 64, "Requests per fit run.", lower_bound=8)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Measured rounds: each serves every fit setting, then "
                               "every held-out one (interleaved, so drift hits all alike).",
                               lower_bound=1)
_VALIDATE_REQUESTS = flags.DEFINE_integer("validate_requests", 128,
                                          "Requests per held-out run.", lower_bound=8)
_HOLDOUT = flags.DEFINE_integer("holdout_every", 4, "Steps held out of the fit: every n-th "
                                "(their error is reported).", lower_bound=2)
_VALIDATE = flags.DEFINE_bool("validate", False, "Also serve held-out runs with both clocks.")
_PROFILE = flags.DEFINE_string("profile", None, "Validate this profile instead of fitting one.")
_OUT = flags.DEFINE_string("out", None, "Where to write the profile (default: "
                           "serving/profiles.default_path, <params_dir>/profiles/...).")


def main(argv):
  del argv
  distributed.initialize_from_flags()  # first: before anything touches the devices
  log = distributed.process_log()
  cfg = _CONFIG.value
  cfg.clock.mode = "measured"
  cfg = loading.resolve_for(cfg, "calibrate")
  if _PROFILE.value and not _VALIDATE.value:
    raise config_lib.ConfigError("--profile=PATH validates that profile: add --validate")
  prof = profiles.load_for(cfg, _PROFILE.value) if _PROFILE.value else None
  mesh = run.make_mesh(cfg)
  params, source = loading.load(cfg, mesh, log=log)
  runner = clock_profile.Runner(cfg, params, source, mesh, _WORKDIR.value, _NUM_REQUESTS.value,
                                log)
  write = distributed.is_logging_process()
  path = _PROFILE.value
  fit = prof is None
  n_fit, n_held = len(clock_profile.fit_settings(cfg)), len(clock_profile.validation_settings(cfg))
  log(f"measure: {_ROUNDS.value} rounds of " + " and ".join(
      ([f"{n_fit} fit runs of {_NUM_REQUESTS.value} requests"] if fit else []) +
      ([f"{n_held} held-out runs of {_VALIDATE_REQUESTS.value}"] if _VALIDATE.value else [])) +
      ", measured clock")
  steps, wall, measured, by_round = clock_profile.measure(
      cfg, runner, _ROUNDS.value, fit, _VALIDATE.value, _VALIDATE_REQUESTS.value)
  if fit:
    prof = clock_profile.make_profile(cfg, steps, wall, _HOLDOUT.value, " ".join(sys.argv),
                                      rounds=_ROUNDS.value, requests_per_run=_NUM_REQUESTS.value)
    path = _OUT.value or profiles.default_path(cfg, prof)
    f = prof["fit"]
    log(f"fit on {f['fit_steps']} steps, held out {f['heldout_steps']} (median step "
        f"{f['heldout_step_s_median'] * 1e3:.2f} ms): |error| median "
        f"{f['heldout_rel_err_median']:.1%}, p90 {f['heldout_rel_err_p90']:.1%}")
    log("coefficients: " + ", ".join(f"{k} {v:.3g} s" for k, v in prof["coef"].items()))
  if _VALIDATE.value:
    rows = clock_profile.validate(cfg, runner, prof, path, measured, _VALIDATE_REQUESTS.value)
    speed = clock_profile.host_speed(prof["coef"], by_round)
    table = clock_profile.validation_table(rows) + (
        "\n\nHost speed per round (measured / predicted time of all its steps): " +
        ", ".join(f"{x:.2f}" for x in speed))
    prof["validation"] = dict(rounds=_ROUNDS.value, requests_per_run=_VALIDATE_REQUESTS.value,
                              runs=rows, host_speed_by_round=speed)
    if write:
      os.makedirs(_WORKDIR.value, exist_ok=True)
      files.write_text_atomic(os.path.join(_WORKDIR.value, "validation.md"), table + "\n")
    log(table)
  if write:
    profiles.save(path, prof)
    log(f"profile: {path} (" + ("clock.profile=auto finds it for this model and step options"
                                if profiles.found_by_auto(cfg, path) else f"use it with --config.clock.profile={path}") + ")")


if __name__ == "__main__":
  cli.run(main)
