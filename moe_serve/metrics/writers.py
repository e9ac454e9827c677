"""Writers for run records: JSONL (the source of truth), a CSV summary, TensorBoard scalars.

JSONL lines are `json.dumps(record, sort_keys=True, separators=(",", ":"))`: the same records give
the same bytes, which the cost_model reproducibility test relies on.
"""
import csv
import json
import os

from moe_serve.files import atomic_open


def dumps(record):
  return json.dumps(record, sort_keys=True, separators=(",", ":"))


def write_jsonl(path, records):
  """Writes one JSON object per line (replaces the file atomically)."""
  with atomic_open(path) as f:
    for rec in records:
      f.write(dumps(rec) + "\n")


def read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def write_json(path, obj):
  with atomic_open(path) as f:
    json.dump(obj, f, sort_keys=True, indent=1)
    f.write("\n")


def flatten(summary, prefix=""):
  """Nested dict -> {"a/b/c": scalar}; lists and dict-valued leaves are skipped."""
  out = {}
  for key, value in summary.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "/"))
    elif value is None or isinstance(value, (int, float, str, bool)):
      out[name] = value
  return out


def write_summary_csv(path, summary):
  """Two columns, metric and value, one row per scalar of the (flattened) summary."""
  with atomic_open(path, newline="") as f:
    w = csv.writer(f)
    w.writerow(["metric", "value"])
    for name, value in sorted(flatten(summary).items()):
      w.writerow([name, "" if value is None else value])


class TensorBoard:
  """Scalars per step (x = step index) and the summary at the end, under `logdir`."""

  def __init__(self, logdir):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("TensorBoard output needs tensorboardX: "
                        "pip install -e '.[tensorboard]' -c constraints.txt") from e
    os.makedirs(logdir, exist_ok=True)
    self._w = SummaryWriter(logdir)

  def step(self, rec):
    i = rec["step"]
    for key in ("t", "dt", "decode", "prefill_tokens", "slots_used", "kv_blocks_used", "waiting"):
      self._w.add_scalar(f"step/{key}", rec[key], i)

  def summary(self, summary, step=0):
    for name, value in flatten(summary).items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._w.add_scalar(f"summary/{name}", value, step)

  def close(self):
    self._w.close()
