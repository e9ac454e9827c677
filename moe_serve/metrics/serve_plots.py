"""PNG plots of one serving run (scripts/serve.py writes them under `<workdir>/plots/`):

- `latency_cdf.png`: empirical CDFs of TTFT, TPOT and E2EL (ms), one panel each, p50 and p99
  marked;
- `over_time.png`: against virtual time, output tokens per second (binned), running and waiting
  requests, and KV blocks used (and held by the prefix cache, when step records carry
  `kv_blocks_cached`). The y axes fit the data: a budget (slots, KV blocks) is a dotted line only
  when it is within `BUDGET_IN_VIEW` times the data's peak; further off it is named in the legend
  instead, so a light trace's lines are not pressed flat under a budget hundreds of times higher.

Inputs are the engine's records (the `steps` and `requests` logs). matplotlib is the `plots`
extra; without it `write_all` returns no paths.
"""
import os

import numpy as np

from moe_serve import files
from moe_serve.metrics import latency


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _cdf(ax, values_ms, title, what):
  ax.set_title(title)
  ax.set_ylabel(f"fraction of {what}")
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  if not values_ms:
    ax.text(0.5, 0.5, f"no {what} (TPOT needs 2+ output tokens)" if "TPOT" in title
            else f"no {what}", ha="center", va="center", transform=ax.transAxes)
    return
  xs = np.sort(np.asarray(values_ms, np.float64))
  ys = np.arange(1, len(xs) + 1) / len(xs)
  # A step from 0 at the smallest value, so even one request draws a visible rise; markers
  # on each value when there are few.
  ax.step(np.r_[xs[0], xs], np.r_[0.0, ys], where="post", color="C0", lw=2, zorder=2,
          marker="o" if len(xs) < 20 else None, markersize=4,
          markevery=list(range(1, len(xs) + 1)),
          label=f"{len(xs)} {what if len(xs) > 1 else what.rstrip('s')}")
  # p50 and p99 as marks on the curve (never a line that the curve could hide).
  for q, marker in ((50, "D"), (99, "v")):
    v = float(np.percentile(xs, q))
    ax.plot([v], [q / 100], marker=marker, color="C3", markersize=8, linestyle="none", zorder=3,
            label=f"p{q} {v:.1f} ms")
  ax.set_xlabel("ms (virtual time)")
  ax.legend(fontsize=8, loc="lower right")


# In an idle gap nothing runs, but the prefix cache keeps its blocks: KV lines then show what
# the next step found cached (0 without a prefix cache).
_IDLE_VALUE = {"kv_blocks_used": "kv_blocks_cached", "kv_blocks_cached": "kv_blocks_cached"}


def _timeline(steps, key):
  """(t, value) points of a per-step quantity, held over each step; in idle gaps 0 (or the
  cached blocks, _IDLE_VALUE)."""
  ts, vs, end = [], [], None
  for s in steps:
    if end is not None and s["t"] > end + 1e-12:  # idle: nothing running until the next arrival
      idle = s.get(_IDLE_VALUE.get(key), 0)
      ts += [end, s["t"]]
      vs += [idle, idle]
    ts += [s["t"], s["t"] + s["dt"]]
    vs += [s.get(key, 0), s.get(key, 0)]
    end = s["t"] + s["dt"]
  return np.asarray(ts), np.asarray(vs)


BUDGET_IN_VIEW = 4.0  # a budget line shares the axis only within this factor of the data's peak


def _fit_to_data(ax, peak, budget, what):
  """y from 0 to a tenth above the data's `peak` (or `budget` when it is within BUDGET_IN_VIEW of
  it); a budget further off is a legend entry, not a line."""
  top = max(peak, 1)
  if budget and budget <= BUDGET_IN_VIEW * top:
    ax.axhline(budget, color="gray", linestyle=":", label=f"{what} ({budget})")
    top = max(top, budget)
  elif budget:
    ax.plot([], [], " ", label=f"{what}: {budget} ({budget / top:.0f}x the peak, off the scale)")
  ax.set_ylim(0, top * 1.1)


def _lines(ax, steps, series):
  """One held line per (key, label, style, color, width) of `series`; returns the peak value."""
  peak = 0
  for key, label, style, color, width in series:
    t, v = _timeline(steps, key)
    if v.size and not v.any():
      label += " (0 throughout, on the axis)"  # a line the axis would otherwise hide
    ax.plot(t, v, linestyle=style, color=color, lw=width, label=label)
    peak = max(peak, float(v.max()) if v.size else 0)
  return peak


def _throughput(ax, records):
  times = np.concatenate([np.asarray(r["token_times"], np.float64) for r in records
                          if r["status"] == "finished" and r["token_times"]] or [np.zeros(0)])
  ax.set_ylabel("output tok/s")
  ax.set_title("Output token throughput (binned)")
  ax.grid(alpha=0.3)
  if times.size == 0:
    ax.text(0.5, 0.5, "no tokens", ha="center", va="center", transform=ax.transAxes)
    return
  span = max(float(times.max()), 1e-9)
  bins = min(60, max(5, times.size // 10))
  counts, edges = np.histogram(times, bins=bins, range=(0.0, span))
  width = edges[1] - edges[0]
  ax.bar(edges[:-1], counts / width, width=width, align="edge", color="C0", alpha=0.7,
         label=f"bins of {width * 1e3:.0f} ms")
  _legend_beside(ax)


def _legend_beside(ax):
  """The legend right of the axes, where it cannot hide a line."""
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def write_all(steps, records, out_dir, kv_num_blocks=None, max_num_seqs=None):
  """Writes the plots above into `out_dir`; returns their paths ([] without matplotlib)."""
  try:
    plt = _pyplot()
  except ImportError:
    return []
  files.makedirs(out_dir)
  paths = []
  done = [r for r in records if r["status"] == "finished"]
  ttft, tpot, e2el = [], [], []
  for rec in done:
    a, b, c, _ = latency.per_request(rec)
    ttft.append(a * 1e3)
    e2el.append(c * 1e3)
    if b is not None:
      tpot.append(b * 1e3)
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  for ax, values, title in zip(axes, (ttft, tpot, e2el), ("TTFT", "TPOT", "E2EL")):
    _cdf(ax, values, f"{title} CDF", "requests")
  paths.append(_save(plt, fig, out_dir, "latency_cdf.png"))

  paths.append(_save(plt, over_time(plt, steps, records, kv_num_blocks, max_num_seqs),
                     out_dir, "over_time.png"))
  return paths


def over_time(plt, steps, records, kv_num_blocks=None, max_num_seqs=None):
  """The over_time.png figure (axes: throughput, requests, KV blocks), not yet saved."""
  fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
  _throughput(axes[0], records)
  peak = _lines(axes[1], steps, (("slots_used", "running (slots used)", "-", "C0", 1.5),
                                 ("waiting", "waiting", "--", "C1", 2)))
  _fit_to_data(axes[1], peak, max_num_seqs, "slots")
  axes[1].set_ylabel("requests")
  axes[1].set_title("Running and waiting requests")
  kv = [("kv_blocks_used", "KV blocks used", "-", "C2", 1.5)]
  if any("kv_blocks_cached" in s for s in steps):  # the prefix cache's blocks, drawn over
    kv.append(("kv_blocks_cached", "KV blocks held by the prefix cache", "--", "C4", 2))
  _fit_to_data(axes[2], _lines(axes[2], steps, kv), kv_num_blocks, "KV budget")
  axes[2].set_ylabel("KV blocks")
  axes[2].set_title("KV cache blocks" + (" used and cached" if len(kv) == 2 else " used"))
  axes[2].set_xlabel("virtual time (s)")
  for ax in axes[1:]:
    ax.yaxis.get_major_locator().set_params(integer=True)  # counts
    _legend_beside(ax)
    ax.grid(alpha=0.3)
  return fig


def _save(plt, fig, out_dir, name):
  path = files.join(out_dir, name)
  fig.tight_layout()
  with files.atomic_open(path, binary=True) as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  return path
