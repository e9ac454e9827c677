"""The one metrics-writing stack: JSONL (the source of truth), a CSV summary, TensorBoard scalars.

Serving writes whole files at the end of a run (`write_jsonl`, `write_json`: atomic, so a kill
never leaves a truncated file); training appends a record per logged step as it goes
(`MetricsLog`: one flushed line each, and a partial last line left by a kill is cut on resume).
Both mirror scalars to TensorBoard under `tb/` when asked (`tensorboard --logdir WORKDIR/tb`).

JSONL lines of run files are `json.dumps(record, sort_keys=True, separators=(",", ":"))`: the same
records give the same bytes, which the cost_model reproducibility test relies on.
"""
import csv
import json
import os
import tempfile

import numpy as np

from moe_serve import files
from moe_serve.files import atomic_open

TB_DIR = "tb"  # TensorBoard event files under a run's workdir


def dumps(record):
  return json.dumps(record, sort_keys=True, separators=(",", ":"))


def write_jsonl(path, records):
  """Writes one JSON object per line (replaces the file atomically)."""
  with atomic_open(path) as f:
    for rec in records:
      f.write(dumps(rec) + "\n")


def read_jsonl(path):
  with files.open_read(path) as f:
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


def _summary_writer():
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("TensorBoard output needs tensorboardX: "
                      "pip install -e '.[tensorboard]' -c constraints.txt, or turn the "
                      "tensorboard option off") from e
  return SummaryWriter


class TensorBoard:
  """Scalars under `logdir`: per serving step (x = step index), per training record, and a
  run's summary at the end. On an object store (`gs://`) the events go to a local temporary
  directory and are uploaded, each file one whole object, by `close()`."""

  def __init__(self, logdir):
    summary_writer = _summary_writer()
    self._dest, self._tmp = logdir, None
    if not files.is_local(logdir):
      self._tmp = tempfile.TemporaryDirectory(prefix="moe_serve-tb-")
      logdir = self._tmp.name
    os.makedirs(logdir, exist_ok=True)
    self._w = summary_writer(logdir)

  def step(self, rec):
    i = rec["step"]
    for key in ("t", "dt", "decode", "prefill_tokens", "slots_used", "kv_blocks_used", "waiting",
                "kv_blocks_cached", "prefix_hit_tokens"):
      if key in rec:  # the last two: serve.prefix_cache only
        self._w.add_scalar(f"step/{key}", rec[key], i)

  def record(self, prefix, record, step):
    """Every number of `record` (nested dicts flattened to a/b) as `prefix/name` at `step`."""
    for name, value in flatten(record).items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "step":
        self._w.add_scalar(f"{prefix}/{name}", value, step)
    self._w.flush()

  # A run's summary is one point per number: only these headline numbers become scalars (the
  # rest is in summary.json); the whole table goes in as text (TEXT tab).
  HEADLINE = ("completed", "rejected", "preemptions", "request_throughput", "output_throughput",
              "goodput", "ttft_ms/median", "ttft_ms/p99", "tpot_ms/median", "tpot_ms/p99",
              "e2el_ms/median", "e2el_ms/p99", "prefix_cache/hit_rate")

  def summary(self, summary, step=0, text=None):
    flat = flatten(summary)
    self.record("summary", {k: flat[k] for k in self.HEADLINE if flat.get(k) is not None}, step)
    if text:
      self._w.add_text("summary", "    " + text.replace("\n", "\n    "), step)  # preformatted
      self._w.flush()

  def close(self):
    self._w.close()
    if self._tmp is not None:
      files.upload_tree(self._tmp.name, self._dest)
      self._tmp.cleanup()
      self._tmp = None


EVENTS_FILE = "events.out.tfevents.hparams"  # one fixed name: a rebuilt report replaces it


def write_hparams(logdir, sessions, tag=None):
  """TensorBoard's HParams view: one session (a run directory under `logdir`) per
  `(name, hparams, metrics)`; hparams values become str unless bool or number. Returns `logdir`,
  or None without tensorboardX (nothing written)."""
  try:
    summary_writer = _summary_writer()
    from tensorboardX.summary import hparams  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  keep = lambda v: v if isinstance(v, (bool, int, float, str)) else str(v)
  with tempfile.TemporaryDirectory(prefix="moe_serve-hparams-") as tmp:
    for name, hp, metrics in sessions:
      exp, ssi, sei = hparams({k: keep(v) for k, v in hp.items()}, metrics)
      with summary_writer(logdir=os.path.join(tmp, name)) as w:
        for summary in (exp, ssi, sei):
          w.file_writer.add_summary(summary)
        for key, value in metrics.items():
          w.add_scalar(key, value, 0)
      files.makedirs(files.join(logdir, name))
      for event in os.listdir(os.path.join(tmp, name)):  # one file per session
        with open(os.path.join(tmp, name, event), "rb") as src, atomic_open(
            files.join(logdir, name, EVENTS_FILE), binary=True, tag=tag) as f:
          f.write(src.read())
  return logdir


def plain(value):
  """JSON-ready copy of a metrics value (arrays become lists, numpy scalars Python numbers)."""
  if isinstance(value, dict):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
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


class MetricsLog:
  """Appends records to `workdir/name` as they come (one flushed JSON line each) and mirrors
  their numbers to TensorBoard (`workdir/tb`, prefix = the record's `kind`) if asked."""

  def __init__(self, workdir, name="metrics.jsonl", tensorboard=False):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, name)
    self.cut_bytes = cut_partial_line(self.path)
    self._tb = TensorBoard(os.path.join(workdir, TB_DIR)) if tensorboard else None

  def write(self, record):
    record = plain(record)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    if self._tb is not None and "step" in record:
      self._tb.record(record.get("kind", "train"), record, record["step"])

  def read(self):
    """Every record written so far (e.g. to plot the curve)."""
    return read_jsonl(self.path) if os.path.exists(self.path) else []
