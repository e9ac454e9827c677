"""PNG plots of one serving run (scripts/serve.py writes them under `<workdir>/plots/`):

- `latency_cdf.png`: empirical CDFs of TTFT, TPOT and E2EL (ms), one panel each, p50 and p99
  marked;
- `over_time.png`: against virtual time, output tokens per second (binned), running and waiting
  requests, and KV blocks used against the budget.

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


def _timeline(steps, key):
  """(t, value) points of a per-step quantity, held over each step and 0 in idle gaps."""
  ts, vs, end = [], [], None
  for s in steps:
    if end is not None and s["t"] > end + 1e-12:  # idle: nothing running until the next arrival
      ts += [end, s["t"]]
      vs += [0, 0]
    ts += [s["t"], s["t"] + s["dt"]]
    vs += [s[key], s[key]]
    end = s["t"] + s["dt"]
  return np.asarray(ts), np.asarray(vs)


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
  ax.legend(fontsize=8, loc="upper right")


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

  fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
  _throughput(axes[0], records)
  for key, style, color in (("slots_used", "-", "C0"), ("waiting", "--", "C1")):
    t, v = _timeline(steps, key)
    label = "running (slots used)" if key == "slots_used" else "waiting"
    if v.size and not v.any():
      label += " (0 throughout, on the axis)"  # a line the axis would otherwise hide
    axes[1].plot(t, v, linestyle=style, color=color, lw=2 if key == "waiting" else 1.5,
                 label=label)
  if max_num_seqs:
    axes[1].axhline(max_num_seqs, color="gray", linestyle=":", label=f"slots ({max_num_seqs})")
    axes[1].set_ylim(0, max_num_seqs * 1.35)  # room for the legend above the lines
  axes[1].set_ylabel("requests")
  axes[1].set_title("Running and waiting requests")
  axes[1].legend(fontsize=8, loc="upper right")
  axes[1].grid(alpha=0.3)
  t, v = _timeline(steps, "kv_blocks_used")
  axes[2].plot(t, v, color="C2", label="KV blocks used")
  if kv_num_blocks:
    axes[2].axhline(kv_num_blocks, color="gray", linestyle=":", label=f"budget ({kv_num_blocks})")
    axes[2].set_ylim(0, kv_num_blocks * 1.35)
  axes[2].set_ylabel("KV blocks")
  axes[2].set_title("KV cache blocks used")
  axes[2].set_xlabel("virtual time (s)")
  axes[2].legend(fontsize=8, loc="upper right")
  axes[2].grid(alpha=0.3)
  paths.append(_save(plt, fig, out_dir, "over_time.png"))
  return paths


def _save(plt, fig, out_dir, name):
  path = files.join(out_dir, name)
  fig.tight_layout()
  with files.atomic_open(path, binary=True) as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  return path
