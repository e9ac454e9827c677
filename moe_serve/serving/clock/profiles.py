"""Clock profiles: the `cost_model` clock's coefficients for one model on one device, as a file.

A profile (JSON, written by scripts/calibrate.py) holds the coefficients in seconds per unit of
each step-cost feature (serving/clock/step_cost.py), the identity of what was measured, the fit's
statistics and the whole-run validation when one was run:
- `model`: the model section minus what the features already describe (capacity scope and
  factors), plus the step options that change a step's work (routing records, prompt
  log-probs, routing replay); `model_key` is its digest;
- `device`: backend, device kind and, on a CPU, the processor and core count, plus the mesh
  (`device_key`): the hardware the steps ran on;
- `date`, `command`, `commit`, `fit`, and `validation`.

Where profiles live is decided here alone: `default_path` is where scripts/calibrate.py writes a
new one (next to its model, `<params_dir>/profiles/`, or the repository's `profiles/` for a random
init), and `search_dirs` are where `auto` looks (both of those, and `models/*/profiles/`).

`clock.profile` picks one: `auto` finds the profile of this model in the model directory's
`profiles/` folder and the repository's `profiles/` and `models/*/profiles/`, preferring one made
on this device (another device's or mesh's is used with a warning, and the summary says so); a path
names one (a model mismatch is an error, never a silent reuse; another device is allowed:
simulating that device is the point); "" uses the coefficients in `clock.coef`.
"""
import glob
import hashlib
import json
import os
import warnings

import jax

from moe_serve import config as config_lib
from moe_serve import files
from moe_serve import provenance
from moe_serve.serving.clock import running as clock_lib
from moe_serve.serving.clock import step_cost

# The repository's profiles/ (this file is moe_serve/serving/clock/profiles.py).
REPO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "profiles")
FORMAT = 1
_FEATURE_FREE_ROUTER_KEYS = ("capacity_scope", "capacity_factor_prefill", "capacity_factor_decode")


class ProfileError(config_lib.ConfigError):
  """A clock profile that is missing, malformed, or made for another model."""


def _digest(obj):
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _same(a, b):
  return list(a) == list(b) if isinstance(b, tuple) else a == b


def model_identity(cfg):
  """What a profile must match: the model (without scope and factors) and the step options."""
  model = cfg.model.to_dict()
  model["router"] = {k: v for k, v in model["router"].items()
                     if k not in _FEATURE_FREE_ROUTER_KEYS}
  if not model.get("batch_invariant", False):  # off = the kernels profiles were made with before
    model.pop("batch_invariant", None)         # the option existed; on needs its own profile
  # Options added later, at their defaults, describe the model profiles were made with before.
  for section, defaults in ((model, config_lib.ARCH_OPTION_DEFAULTS),
                            (model["router"], config_lib.ROUTER_OPTION_DEFAULTS)):
    for key, value in defaults.items():
      if key in section and _same(section[key], value):
        del section[key]
  s = cfg.serve
  step = dict(record_routing=bool(s.record_routing), prompt_logprobs=bool(s.prompt_logprobs),
              replay_routing=bool(s.get("replay_routing", False)))
  return dict(model=model, step=step)


def model_key(cfg):
  return _digest(model_identity(cfg))


def device_identity(cfg):
  """Where the steps run: backend and device kind (plus processor and cores on a CPU) and the
  config's mesh."""
  ident = dict(backend=jax.default_backend(), kind=jax.devices()[0].device_kind)
  if ident["backend"] == "cpu":
    ident.update(processor=provenance.cpu_name(), cores=os.cpu_count())
  ident["mesh"] = {a: int(cfg.mesh[a]) for a in config_lib.MESH_AXES}
  return ident


def device_name(ident):
  extra = f", {ident['processor']}, {ident['cores']} cores" if "processor" in ident else ""
  mesh = ident.get("mesh") or {}
  if any(v != 1 for v in mesh.values()):
    extra += ", mesh " + " x ".join(f"{k} {v}" for k, v in mesh.items())
  return f"{ident['backend']} ({ident['kind']}{extra})"


def make(cfg, coef, fit, command, commit, date, validation=None):
  dev = device_identity(cfg)
  return dict(format=FORMAT, model_key=model_key(cfg), device_key=_digest(dev), device=dev,
              coef={f: float(coef[f]) for f in step_cost.FEATURES}, date=date, command=command,
              commit=commit, fit=fit, validation=validation, model=model_identity(cfg))


def load(path):
  try:
    with open(path) as f:
      prof = json.load(f)
  except (OSError, ValueError) as e:
    raise ProfileError(f"clock profile {path}: {e}") from e
  missing = [k for k in ("format", "model_key", "device", "coef", "model") if k not in prof]
  if missing or prof["format"] != FORMAT:
    raise ProfileError(f"clock profile {path} is not a format-{FORMAT} profile (missing "
                       f"{missing or 'nothing'}, format {prof.get('format')!r}); rerun "
                       "scripts/calibrate.py")
  unknown = sorted(set(prof["coef"]) - set(step_cost.FEATURES))
  if unknown:
    raise ProfileError(f"clock profile {path} has coefficients for unknown features {unknown}")
  return prof


def save(path, prof):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  files.write_text_atomic(path, json.dumps(prof, indent=1, sort_keys=True) + "\n")


def default_path(cfg, prof):
  """Where a new profile `prof` of `cfg`'s model is written (scripts/calibrate.py, unless --out
  names a path): <params_dir>/profiles/<name>.json (a profile travels with its model), or
  profiles/init-<name>.json in this repository for a random init; `search_dirs` holds both, so
  `clock.profile=auto` finds it. <name>: dispatch, backend, model and device keys."""
  name = (f"{cfg.model.router.dispatch}-{prof['device']['backend']}-{prof['model_key'][:8]}-"
          f"{prof['device_key'][:8]}.json")
  if cfg.params_dir:
    return os.path.join(cfg.params_dir, "profiles", name)
  return os.path.join(REPO_DIR, "init-" + name)


def search_dirs(cfg):
  """<params_dir>/profiles, then profiles/ and models/*/profiles/ of this repository (a random
  init of a bundled architecture is priced like the trained model: weights are not identity)."""
  dirs = [os.path.join(cfg.params_dir, "profiles")] if cfg.get("params_dir") else []
  repo = os.path.dirname(REPO_DIR)
  dirs += [REPO_DIR] + sorted(glob.glob(os.path.join(repo, "models", "*", "profiles")))
  return list(dict.fromkeys(os.path.normpath(d) for d in dirs))


def found_by_auto(cfg, path):
  """Whether `clock.profile=auto` looks where `path` is (one of `search_dirs`)."""
  return os.path.dirname(os.path.abspath(path)) in map(os.path.abspath, search_dirs(cfg))


def _mismatch(prof, ident):
  """A one-line account of where a profile's model identity differs from `ident`."""
  diffs = []
  for part in ("model", "step"):
    a, b = prof["model"].get(part, {}), ident[part]
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    diffs += [f"{part}.{k}: profile {a.get(k)!r}, config {b.get(k)!r}" for k in keys[:3]]
  return "; ".join(diffs[:4])


def load_for(cfg, path):
  """The profile at `path`; ProfileError if it was made for another model or step options."""
  prof, ident = load(path), model_identity(cfg)
  if prof["model_key"] != _digest(ident):
    raise ProfileError(f"clock profile {path} was made for another model or step options "
                       f"({_mismatch(prof, ident)}); run scripts/calibrate.py for this config")
  return prof


class Resolved:
  """The coefficients a run uses and where they came from (`describe()`: the summary line)."""

  def __init__(self, coef, path=None, prof=None, here=None):
    self.coef, self.path, self.prof, self.here = coef, path, prof, here
    self.same_device = prof is None or _digest(here) == prof["device_key"]

  def describe(self):
    if self.prof is None:
      return clock_lib.NO_PROFILE
    p, path = self.prof, os.path.relpath(self.path)
    path = self.path if path.startswith("..") else path
    text = f"{path} (made {p.get('date', '?')} on {device_name(p['device'])})"
    return text if self.same_device else text + ", NOT this device: " + device_name(self.here)


def resolve(cfg):
  """The `cost_model` clock's coefficients for `cfg` as clock.profile says (module docstring);
  ProfileError when none fits. `measured` mode resolves nothing."""
  c = cfg.clock
  which = c.get("profile", "")
  if c.mode != "cost_model" or which == "":
    return Resolved({f: float(c.coef.get(f, 0.0)) for f in step_cost.FEATURES})
  dev = device_identity(cfg)
  key, dev_key = model_key(cfg), _digest(dev)
  if which != "auto":
    prof = load_for(cfg, which)
    return Resolved(prof["coef"], which, prof, dev)
  found = []
  for d in search_dirs(cfg):
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
      prof = load(path)
      if prof["model_key"] == key:
        found.append((prof["device_key"] != dev_key, prof["device"]["backend"] != dev["backend"],
                      path, prof))
  if not found:
    raise ProfileError(
        f"no clock profile for this model and step options (key {key}) in "
        f"{', '.join(search_dirs(cfg))}: make one with `python scripts/calibrate.py "
        "--config=<this config> --workdir=runs/calibrate` (it writes one into profiles/), name "
        "one with --config.clock.profile=PATH, or use --config.clock.mode=measured")
  other_device, _, path, prof = min(found, key=lambda f: f[:3])
  res = Resolved(prof["coef"], path, prof, dev)
  if other_device:
    warnings.warn(f"clock profile {res.describe()}: no profile of this model was made on this "
                  "device; virtual times are that device's")
  return res
