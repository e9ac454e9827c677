"""Report of a sweep directory: results.csv, results.md (tables) and PNG plots.

Every row is one finished run (its `result.json`, written by experiments/sweep.py); the columns
are the run's effective setting (scope, capacity factor, load, ...), its determinism aggregate,
serving metrics and quality. Plots are drawn for whatever the sweep varied; an axis with one
value gives one point per line.
"""
import csv
import os

from moe_serve.experiments import sweep

SETTING = ("scope", "capacity_factor", "priority", "router", "load", "mode", "co_domains")
TABLE = (("scope", "scope"), ("capacity_factor", "cf"), ("load", "load req/s"),
         ("unique_completions_mean", "unique/N (mean)"), ("unique_completions_max", "unique (max)"),
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
    row.update({k: res["setting"].get(k) for k in SETTING})
    row.update(res["determinism"])
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


def write_csv(path, table_rows):
  keys = []
  for r in table_rows:
    keys += [k for k in r if k not in keys]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(table_rows)


def build(workdir, out_dir=None, plots=True, log=print):
  """Writes results.csv, results.md and plots/*.png for `workdir`; returns the markdown."""
  out_dir = out_dir or workdir
  table_rows = rows(workdir)
  if not table_rows:
    raise ValueError(f"no finished runs in {workdir}: nothing to report")
  os.makedirs(out_dir, exist_ok=True)
  write_csv(os.path.join(out_dir, "results.csv"), table_rows)
  cost = invariance_cost(table_rows)
  extra = [(k, k) for k in varying(table_rows, SETTING[2:]) if k not in ("load",)]
  columns = TABLE[:3] + tuple(extra) + TABLE[3:]
  md = ["## Determinism, serving and quality per setting", "",
        markdown_table(table_rows, columns)]
  if cost:
    cost_columns = TABLE[:3] + tuple(extra) + (
        ("throughput_vs_batch", "out tok/s vs batch"), ("ttft_vs_batch", "TTFT vs batch"),
        ("tpot_vs_batch", "TPOT vs batch"), ("step_wall_vs_batch", "step wall time vs batch"),
        ("exact_match_minus_batch", "exact match - batch"))
    md += ["", "## Cost of batch invariance (relative to scope `batch`, all else equal)", "",
           markdown_table(cost, cost_columns)]
  text = "\n".join(md) + "\n"
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(text)
  if plots:
    from moe_serve.experiments import plots as plots_lib  # pylint: disable=import-outside-toplevel
    written = plots_lib.write_all(table_rows, os.path.join(out_dir, "plots"))
    log(f"report: {len(table_rows)} runs -> {out_dir}/results.csv, results.md, "
        f"{len(written)} plots in {out_dir}/plots")
  return text
