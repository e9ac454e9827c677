"""Training metrics: one JSON line per record (the source of truth), TensorBoard behind a flag."""
import json
import os

import numpy as np


def _plain(value):
  """JSON-ready copy of a metrics value (arrays become lists, numpy scalars Python numbers)."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  arr = np.asarray(value)
  if arr.ndim == 0:
    return arr.item()
  return arr.tolist()


def cut_partial_line(path):
  """Cuts a last line that lacks its newline (a run killed, or a disk filled, mid-write) so that
  appending after it keeps every line whole; returns the number of bytes cut."""
  if not os.path.exists(path):
    return 0
  with open(path, "rb+") as f:
    data = f.read()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
      f.truncate(keep)
  return len(data) - keep


class MetricsWriter:
  """Appends records to `workdir/metrics.jsonl`; mirrors scalars to TensorBoard if asked."""

  def __init__(self, workdir, tensorboard=False):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.cut_bytes = cut_partial_line(self.path)
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      except ImportError as e:
        raise ImportError("config.train.tensorboard=True needs the tensorboardX package "
                          "(pip install tensorboardX), or set it to False") from e
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, record):
    record = _plain(record)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    if self._tb is not None and "step" in record:
      prefix = record.get("kind", "train")
      for key, value in record.items():
        if isinstance(value, (int, float)) and key != "step":
          self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])
        elif isinstance(value, dict):
          for sub, v in value.items():
            if isinstance(v, (int, float)):
              self._tb.add_scalar(f"{prefix}/{key}/{sub}", v, record["step"])
      self._tb.flush()

  def read(self):
    """Every record written so far (e.g. to plot the curve)."""
    if not os.path.exists(self.path):
      return []
    with open(self.path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]


def curve_table(records, domains):
  """Markdown table of held-out NLL per domain at every eval record (the training curve)."""
  evals = [r for r in records if r.get("kind") == "eval"]
  lines = ["| step | elapsed s | " + " | ".join(domains) + " |",
           "|---:|---:|" + "---:|" * len(domains)]
  for r in evals:
    cells = " | ".join(f"{r['heldout_nll'][d]:.3f}" for d in domains)
    lines.append(f"| {r['step']} | {r['elapsed_s']:.0f} | {cells} |")
  return "\n".join(lines)
