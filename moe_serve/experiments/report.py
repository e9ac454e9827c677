"""Report of a sweep directory: results.csv, results.md (tables) and PNG plots.

Every row is one finished run (its `result.json`, written by experiments/sweep.py); the columns
are the run's effective setting (scope, capacity factor, arm, load, ...), its determinism
aggregate with bootstrap intervals over targets, serving metrics and quality. results.md adds the
forensics section (each run's forensics.jsonl, aggregated in its result: causes, layers, experts
and co-request domains of the divergences). Plots are drawn for whatever the sweep varied, and
TensorBoard gets an HParams view (`tensorboard --logdir WORKDIR/tb`: one session per setting with
its headline metrics). A sweep still running, or split over tasks not all finished, is reported
with what exists; results.md names the settings that are missing.
"""
import csv

from moe_serve import files
from moe_serve.experiments import settings, sweep
from moe_serve.metrics import writers

SETTING = settings.COLUMNS  # the setting columns of a row (settings.StudySetting's fields)
TABLE = (("scope", "scope"), ("capacity_factor", "cf"), ("load", "load req/s"),
         ("targets_diverging_ci", "targets diverging (95% CI)"),
         ("unique_completions_ci", "unique/N mean (95% CI)"), ("unique_completions_max", "unique (max)"),
         ("first_divergence_ci", "first divergence mean (95% CI)"),
         ("agree_with_solo", "agree w/ solo"), ("bitwise_with_solo", "bitwise w/ solo"),
         ("routing_diff_fraction", "routing diff"), ("target_drop_rate", "target drops"),
         ("traffic_drop_rate", "traffic drops"), ("exact_match_mean", "exact match"),
         ("output_throughput", "out tok/s"), ("ttft_ms_median", "TTFT p50 ms"),
         ("tpot_ms_median", "TPOT p50 ms"), ("step_wall_ms_median", "step wall ms"))


def rows(workdir):
  """One flat dict per finished run of the sweep in `workdir`, in grid order."""
  out = []
  for rec in sweep.load_results(workdir):
    res = rec["result"]
    row = {"run": rec["name"], "repeats": None}
    setting = settings.StudySetting.from_dict(res["setting"])
    row.update({k: getattr(setting, k) for k in SETTING})
    row.update({k: v for k, v in res["determinism"].items() if not isinstance(v, dict)})
    for name in ("targets_diverging", "unique_completions", "first_divergence"):
      row[f"{name}_ci"] = _ci_text(*(row.get(f"{name}_ci_{s}") for s in ("mean", "low", "high")))
    row["forensics"] = res["determinism"].get("forensics")
    row["per_target"] = res["per_target"]
    row["repeats"] = min(t["repeats"] for t in res["per_target"].values())
    row.update({k: v for k, v in res["serving"].items() if k != "per_domain"})
    q = res["quality"]
    row["exact_match_mean"] = q["exact_match_mean"]
    row.update({f"exact_match_{d}": v for d, v in sorted(q["exact_match"].items())})
    row.update({f"nll_{d}": v for d, v in sorted(q["nll"].items())})
    row.update({f"unique_{t['domain']}_{tid}": t["unique_completions"]
                for tid, t in sorted(res["per_target"].items())})
    out.append(row)
  return out


def _ci_text(mean, low, high):
  if mean is None:
    return None
  return f"{_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]"


def _fmt(v):
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
  return str(v)


def markdown_table(table_rows, columns=TABLE):
  head = "| " + " | ".join(title for _, title in columns) + " |"
  sep = "|" + "---|" * len(columns)
  body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in table_rows]
  return "\n".join([head, sep] + body)


def varying(table_rows, keys=SETTING):
  """The setting fields that take more than one value across the rows."""
  return [k for k in keys if len({str(r.get(k)) for r in table_rows}) > 1]


def invariance_cost(table_rows):
  """Throughput and latency of each scope relative to `batch` with every other setting equal."""
  same = lambda r: tuple(str(r.get(k)) for k in SETTING if k != "scope")
  ref = {same(r): r for r in table_rows if r["scope"] == "batch"}
  out = []
  for r in table_rows:
    b = ref.get(same(r))
    if r["scope"] == "batch" or b is None:
      continue
    ratio = lambda k, r=r, b=b: (r[k] / b[k]) if r.get(k) and b.get(k) else None
    out.append(dict({k: r.get(k) for k in SETTING},
                    throughput_vs_batch=ratio("output_throughput"),
                    ttft_vs_batch=ratio("ttft_ms_median"), tpot_vs_batch=ratio("tpot_ms_median"),
                    step_wall_vs_batch=ratio("step_wall_ms_median"),
                    exact_match_minus_batch=(r["exact_match_mean"] - b["exact_match_mean"]
                                             if r.get("exact_match_mean") is not None
                                             and b.get("exact_match_mean") is not None else None)))
  return out


def forensics_table(table_rows, top=3):
  """Markdown: per setting with divergent repeats, what the forensics records say (counts; the
  `top` most frequent layers, experts and co-request domains)."""
  head = ("| scope | cf | arm | repeats not bitwise | tokens differ | cause | layers | experts | "
          "co-request domains holding the slots | solo margin (median) |")
  lines = [head, "|" + "---|" * 10]
  short = lambda d: ", ".join(f"{k}: {v}" for k, v in sorted(
      (d or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:top]) or "-"  # result.json sorts keys
  for r in table_rows:
    f = r.get("forensics")
    if not f or not f.get("records"):
      continue
    lines.append(f"| {r['scope']} | {_fmt(r['capacity_factor'])} | {r.get('arm') or 'routing'} | "
                 f"{f['records']} | {_fmt(f.get('token_divergences'))} | {short(f['cause'])} | "
                 f"{short(f['layer'])} | {short(f['expert'])} | {short(f['holder_domains'])} | "
                 f"{_fmt(f.get('solo_margin_median'))} |")
  return "\n".join(lines) if len(lines) > 2 else None


# What TensorBoard's HParams view shows per setting (the numbers of the table above).
HEADLINE = ("targets_diverging_ci_mean", "unique_completions_ci_mean", "unique_completions_max",
            "first_divergence_ci_mean", "agree_with_solo", "bitwise_with_solo",
            "routing_diff_fraction", "target_drop_rate", "traffic_drop_rate", "exact_match_mean",
            "output_throughput", "ttft_ms_median", "tpot_ms_median")


def hparams_sessions(table_rows):
  """(name, setting, metrics) per row for writers.write_hparams: the setting fields the rows vary
  (all of SETTING if none varies) and the HEADLINE numbers each has."""
  keys = varying(table_rows) or list(SETTING)
  number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  return [(r["run"], {k: r.get(k) for k in keys},
           {k: r[k] for k in HEADLINE if number(r.get(k))}) for r in table_rows]


def write_csv(path, table_rows, tag=None):
  table_rows = [{k: v for k, v in r.items() if k not in ("forensics", "per_target")}
                for r in table_rows]
  keys = []
  for r in table_rows:
    keys += [k for k in r if k not in keys]
  with files.atomic_open(path, newline="", tag=tag) as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(table_rows)


def missing_text(names, total):
  """The results.md section naming the settings without a result (None when none is missing)."""
  if not names:
    return None
  return "\n".join([f"## Missing settings: {len(names)} of {total}", "",
                    "No result yet (a task not finished, killed, or still running; run it again "
                    "with the same --task_index and --num_tasks, then scripts/report.py):", ""] +
                   [f"- {n}" for n in names])


def build(workdir, out_dir=None, plots=True, log=print, tag=None):
  """Writes results.csv, results.md, plots/*.png and TensorBoard hparams (tb/) for `workdir`
  (local or `gs://`; `tag`: files.atomic_open's, a sweep task's); returns the markdown."""
  out_dir = out_dir or workdir
  table_rows = rows(workdir)
  absent = sweep.missing(workdir)
  if not table_rows:
    raise ValueError(f"no finished runs in {workdir} ({len(absent)} settings missing): nothing "
                     "to report")
  files.makedirs(out_dir)
  write_csv(files.join(out_dir, "results.csv"), table_rows, tag)
  cost = invariance_cost(table_rows)
  extra = [(k, k) for k in varying(table_rows, SETTING[2:]) if k not in ("load",)]
  columns = TABLE[:3] + tuple(extra) + TABLE[3:]
  md = ["## Determinism, serving and quality per setting", "",
        markdown_table(table_rows, columns)]
  clocks = sorted({r["clock"] for r in table_rows if r.get("clock")})
  if clocks:
    md += ["", "Out tok/s, TTFT and TPOT are virtual time, each step priced by the clock: " +
           "; ".join(clocks) + ". Step wall ms is this host's wall time."]
  if cost:
    cost_columns = TABLE[:3] + tuple(extra) + (
        ("throughput_vs_batch", "out tok/s vs batch"), ("ttft_vs_batch", "TTFT vs batch"),
        ("tpot_vs_batch", "TPOT vs batch"), ("step_wall_vs_batch", "step wall time vs batch"),
        ("exact_match_minus_batch", "exact match - batch"))
    md += ["", "## Cost of batch invariance (relative to scope `batch`, all else equal)", "",
           markdown_table(cost, cost_columns)]
  forensic = forensics_table(table_rows)
  md += ["", "## Divergence forensics (each run's forensics.jsonl)", "",
         forensic or "No repeat differs from its solo reference in any setting."]
  gap = missing_text(absent, len(table_rows) + len(absent))
  if gap:
    md += ["", gap]
  text = "\n".join(md) + "\n"
  files.write_text_atomic(files.join(out_dir, "results.md"), text, tag=tag)
  tb = writers.write_hparams(files.join(out_dir, writers.TB_DIR), hparams_sessions(table_rows))
  if plots:
    from moe_serve.experiments import plots as plots_lib  # pylint: disable=import-outside-toplevel
    written = plots_lib.write_all(table_rows, files.join(out_dir, "plots"), tag)
    log(f"report: {len(table_rows)} runs -> {out_dir}/results.csv, results.md, "
        f"{len(written)} plots in {out_dir}/plots" +
        (f", hparams: tensorboard --logdir={tb}" if tb else "") +
        (f"; {len(absent)} settings missing" if absent else ""))
  return text
