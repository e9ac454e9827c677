"""Two runs side by side (scripts/compare.py): serve runs (a workdir with summary.json) or sweeps
(a workdir with sweep.json), local or `gs://`.

The table has one line per metric (per setting both sweeps ran, matched by run name): run A's
value, run B's, and B/A. Serve runs: the headline serving metrics (metrics/writers.py's
TensorBoard.HEADLINE); sweeps: the report's headline numbers (determinism, serving, quality:
experiments/report.py's HEADLINE). Runs are compared only on the same model (architecture and
parameters) and the same devices, as their config.json and provenance say; `force` compares
anyway, saying what differs.
"""
import hashlib
import json

from moe_serve import config as config_lib
from moe_serve import files
from moe_serve.experiments import report, sweep
from moe_serve.metrics import writers


def _model_id(cfg, params):
  """A short hash of the model's architecture (config `model`) and where its weights came from."""
  text = json.dumps([cfg.get("model"), params], sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _device(prov):
  return (f"{prov.get('backend')}/{prov.get('device_kind')} x {prov.get('device_count')} "
          f"({prov.get('process_count')} process(es))")


def load(path):
  """{"kind": serve|sweep, "rows": {name: {metric: value}}, "model", "device"} of a workdir."""
  if files.exists(files.join(path, "summary.json")):
    summary = json.loads(files.read_text(files.join(path, "summary.json")))
    cfg = json.loads(files.read_text(files.join(path, "config.json")))
    flat = writers.flatten(summary)
    return dict(kind="serve", rows={"serve": {k: flat.get(k) for k in
                                              writers.TensorBoard.HEADLINE}},
                model=_model_id(cfg, summary.get("params")),
                device=_device(summary.get("provenance", {})))
  if files.exists(files.join(path, sweep.MANIFEST_FILE)):
    records = sweep.load_results(path)
    if not records:
      raise config_lib.ConfigError(f"{path}: no finished run in this sweep to compare")
    rows = {r["run"]: {k: r.get(k) for k in report.HEADLINE} for r in report.rows(path)}
    first = records[0]
    config_path = files.join(path, first["name"], "config.json")  # older sweeps have none
    cfg = json.loads(files.read_text(config_path)) if files.exists(config_path) else {}
    return dict(kind="sweep", rows=rows, model=_model_id(cfg, first["result"].get("params")),
                device=_device(first.get("provenance", {})))
  raise config_lib.ConfigError(f"{path} is neither a serve run (summary.json) nor a sweep "
                               f"({sweep.MANIFEST_FILE})")


def differences(a, b):
  """What makes two loaded runs incomparable: ["model ...", "device ..."] ([] if none)."""
  out = []
  if a["kind"] != b["kind"]:
    out.append(f"kind: {a['kind']} vs {b['kind']}")
  for key in ("model", "device"):
    if a[key] != b[key]:
      out.append(f"{key}: {a[key]} vs {b[key]}")
  return out


def _fmt(v):
  if v is None:
    return "-"
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(a, b, names=("A", "B")):
  """Markdown: run, metric, A, B, B/A for every metric of every run name both have."""
  lines = [f"| run | metric | {names[0]} | {names[1]} | {names[1]}/{names[0]} |",
           "|---|---|---|---|---|"]
  for run in [r for r in a["rows"] if r in b["rows"]]:
    for metric, va in a["rows"][run].items():
      vb = b["rows"][run].get(metric)
      num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
      ratio = vb / va if num(va) and num(vb) and va else None
      lines.append(f"| {run} | {metric} | {_fmt(va)} | {_fmt(vb)} | {_fmt(ratio)} |")
  only = sorted(set(a["rows"]) ^ set(b["rows"]))
  if only:
    lines += ["", f"In one run only: {', '.join(only)}"]
  return "\n".join(lines)


def compare(path_a, path_b, force=False):
  """The comparison text; a ConfigError naming what differs unless `force`."""
  a, b = load(path_a), load(path_b)
  diff = differences(a, b)
  if diff and (not force or a["kind"] != b["kind"]):
    raise config_lib.ConfigError(f"{path_a} and {path_b} are not comparable ({'; '.join(diff)})"
                                 + ("" if a["kind"] != b["kind"] else "; --force compares anyway"))
  head = [f"A: {path_a}", f"B: {path_b}"] + [f"differs (--force): {d}" for d in diff]
  return "\n".join(head + ["", table(a, b)])
