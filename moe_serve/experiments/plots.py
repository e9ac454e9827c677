"""PNG plots of a sweep's rows (see report.py): one line per capacity scope in every panel, and
per setting the distribution over targets of unique completions and first divergence."""
import matplotlib
import numpy as np

from moe_serve import files
from moe_serve.experiments import settings

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=wrong-import-position


# A line each (the setting fields of settings.LINE_KEYS that vary; scope always):
_LINE_KEYS = settings.LINE_KEYS


# Marker, line style and marker size per line, so lines that coincide stay visible: later lines
# are drawn smaller, hollow and dashed over the earlier ones, and the legend says which coincide.
_STYLES = (("o", "-", 10), ("s", "--", 7), ("^", ":", 5), ("D", "-.", 4), ("v", "--", 4),
           ("x", ":", 6))
_X_LABELS = {"capacity_factor": "capacity factor", "load": "load (requests/s)"}


def _lines(ax, rows, x, y, title, ylabel, first=0):
  """One line per setting along `x`; with a single x value, one bar per setting instead (a
  line over one point shows nothing). `first`: the colour and style index of the first line
  (several calls on one panel keep their lines apart). Returns how many series it drew."""
  keys = [k for k in _LINE_KEYS if k == "scope" or len({str(r.get(k)) for r in rows}) > 1]
  label = lambda r: ", ".join(f"{k}={r.get(k)}" if k != "scope" else str(r.get(k)) for k in keys)
  series = []
  for name in sorted({label(r) for r in rows}):
    pts = sorted((r[x], r[y]) for r in rows if label(r) == name and r.get(y) is not None)
    if pts:
      series.append((name, pts))
  xs = sorted({p[0] for _, pts in series for p in pts})
  xlabel = _X_LABELS.get(x, x)
  if len(xs) == 1:
    bars = ax.bar(range(len(series)), [pts[0][1] for _, pts in series],
                  color=[f"C{i}" for i in range(len(series))])
    if len(series) <= 3:  # short enough to sit under their bars
      ax.set_xticks(range(len(series)))
      ax.set_xticklabels([name.replace(", ", "\n") for name, _ in series], fontsize=8)
    else:  # more settings than a panel's width holds side by side: name each bar in a legend
      ax.set_xticks(range(len(series)))
      ax.set_xticklabels([str(i + 1) for i in range(len(series))], fontsize=8)
      for i, (bar, (name, _)) in enumerate(zip(bars, series)):
        bar.set_label(f"{i + 1}: {name}")
      ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.set_title(f"{title}\n(one {xlabel}: {xs[0]:g})" if xs else title)
  else:
    # Lines "coincide" when equal to 4 significant digits (what a reader can tell apart): the
    # numerical arm's NLL, say, moves only in the 6th digit.
    key = lambda v: float(f"{v:.4g}")
    first_with = {}
    for name, pts in series:  # a constant line and a level line at its value coincide
      if len({key(p[1]) for p in pts}) == 1:
        first_with.setdefault(("level", key(pts[0][1])), name)
    for i, (name, pts) in enumerate(series, first):
      marker, style, size = _STYLES[i % len(_STYLES)]
      if len(pts) == 1:  # a setting the x axis does not apply to: a level line, not one dot
        same = first_with.setdefault(("level", key(pts[0][1])), name)
        ax.axhline(pts[0][1], color=f"C{i}", linestyle=style, linewidth=2.5 if i == first else 1.5,
                   label=(f"{name} ({xlabel} {pts[0][0]:g} only)" if same == name
                          else f"{name} ({xlabel} {pts[0][0]:g} only; same as {same})"))
        continue
      same = first_with.setdefault(tuple((p[0], key(p[1])) for p in pts), name)
      if same == name and len({key(p[1]) for p in pts}) == 1:
        same = first_with[("level", key(pts[0][1]))]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle=style,
              markersize=size, fillstyle="full" if i == first else "none", markeredgewidth=1.5,
              color=f"C{i}", label=name if same == name else f"{name} (same as {same})")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    # Below the axes and their x label (hides no line); offset in points, not axes fractions,
    # so a short panel does not pull it up over the label.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0), borderaxespad=0,
              bbox_transform=ax.transAxes + matplotlib.transforms.ScaledTranslation(
                  0, -0.45, ax.figure.dpi_scale_trans))
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  return len(series)


def _save(fig, out_dir, name, tag=None):
  """Writes `fig` as `out_dir/name` (atomic, local or object store; `tag`: files.atomic_open's)."""
  path = files.join(out_dir, name)
  fig.tight_layout()
  with files.atomic_open(path, binary=True, tag=tag) as f:
    fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def _slice(rows, fixed_key):
  """Rows at the most common value of `fixed_key` (so a line varies only along its x axis)."""
  values = [r[fixed_key] for r in rows]
  mode = max(set(values), key=values.count)
  return [r for r in rows if r[fixed_key] == mode], mode


def _setting_label(r):
  text = f"{r['scope']}\ncf {r['capacity_factor']:g}"
  if r.get("arm") not in (None, "routing"):
    text += f"\n{r['arm']}"
  if r.get("replay") not in (None, "none"):
    text += f"\nreplay {r['replay']}"
  if r.get("invariant"):
    text += "\ninvariant"
  return text


def divergence_by_setting(rows, out_dir, tag=None):
  """Two panels over the settings: each target's unique completions and mean first divergence
  position (dots, spread sideways), with the mean over targets and its bootstrap 95% interval."""
  fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.5 * len(rows)), 4.5))
  n = max(r["repeats"] for r in rows)
  panels = (("unique_completions", "unique_completions",
             f"Unique completions of {n} repeats, per target", "unique completions"),
            ("first_divergence_mean", "first_divergence",
             "First divergent token, per diverging target", "output index (mean over repeats)"))
  for ax, (key, ci, title, ylabel) in zip(axes, panels):
    for j, r in enumerate(rows):
      vals = [t[key] for t in (r.get("per_target") or {}).values() if t.get(key) is not None]
      if vals:
        ax.scatter(j - 0.3 + 0.45 * np.linspace(0, 1, len(vals)), vals, s=16, alpha=0.7,
                   color=f"C{j % 10}")
      else:
        ax.text(j, 0.5, "none", ha="center", va="center", transform=ax.get_xaxis_transform(),
                fontsize=8, color="gray")
      mean, lo, hi = (r.get(f"{ci}_ci_{s}") for s in ("mean", "low", "high"))
      if mean is not None:
        ax.errorbar([j + 0.3], [mean], yerr=[[mean - lo], [hi - mean]], fmt="D", color="k",
                    capsize=4, markersize=5, label="mean, 95% CI over targets" if j == 0 else None)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([_setting_label(r) for r in rows], fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0.9 if key == "unique_completions" else 0)
    ax.grid(alpha=0.3, axis="y")
  handles, labels = axes[0].get_legend_handles_labels()
  if handles:
    axes[0].legend(handles, labels, fontsize=8)
  return _save(fig, out_dir, "divergence_by_setting.png", tag)


def write_all(rows, out_dir, tag=None):
  """Writes every plot; returns their paths."""
  files.makedirs(out_dir)
  paths = [divergence_by_setting(rows, out_dir, tag)]
  at_load, load = _slice(rows, "load")
  at_cf, cf = _slice(rows, "capacity_factor")

  fig, ax = plt.subplots(figsize=(5.5, 4))
  n = max(r["repeats"] for r in rows)
  _lines(ax, at_load, "capacity_factor", "unique_completions_mean",
         f"Unique completions of {n} repeats (load {load:g}/s)", "unique completions (mean/target)")
  paths.append(_save(fig, out_dir, "unique_vs_capacity_factor.png", tag))

  fig, ax = plt.subplots(figsize=(5.5, 4))
  _lines(ax, at_cf, "load", "agree_with_solo", f"Agreement with solo (cf {cf:g})",
         "fraction of repeats equal to solo")
  paths.append(_save(fig, out_dir, "agreement_vs_load.png", tag))

  # Stacked, not side by side: each panel's legend (a line per setting and domain) needs the
  # figure's width (side by side, the left legend ran over the right one).
  fig, axes = plt.subplots(2, 1, figsize=(8, 10))
  _lines(axes[0], at_load, "capacity_factor", "exact_match_mean", "Task exact match",
         "exact match (mean over task domains)")
  nll_keys = sorted(k for k in rows[0] if k.startswith("nll_"))
  drawn = 0
  for key in nll_keys:  # each domain's lines after the previous domain's: no colour repeats
    drawn += _lines(axes[1], [dict(r, scope=f"{r['scope']}, {key[4:]}") for r in at_load],
                    "capacity_factor", key, "Continuation NLL", "nats/token", first=drawn)
  paths.append(_save(fig, out_dir, "quality_vs_capacity_factor.png", tag))

  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  for ax, (key, label) in zip(axes, (("output_throughput", "output tok/s (virtual)"),
                                     ("ttft_ms_median", "TTFT p50 (ms)"),
                                     ("tpot_ms_median", "TPOT p50 (ms)"))):
    _lines(ax, at_cf, "load", key, f"{label}, cf {cf:g}", label)
  paths.append(_save(fig, out_dir, "serving_vs_load.png", tag))

  em_keys = sorted(k for k in rows[0] if k.startswith("exact_match_") and k != "exact_match_mean")
  if em_keys:
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows)), 4))
    width = 0.8 / len(em_keys)
    for i, key in enumerate(em_keys):
      ax.bar([j + i * width for j in range(len(rows))], [r.get(key) or 0 for r in rows], width,
             label=key[len("exact_match_"):])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([f"{_setting_label(r)}\nload {r['load']:g}" for r in rows], fontsize=7)
    ax.set_ylabel("exact match")
    ax.set_title("Per-domain exact match per setting")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir, "per_domain_exact_match.png", tag))
  return paths
