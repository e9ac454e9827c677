"""Shared by the benchmarks: interleaved timing and RESULTS.md sections (date, machine, command)."""
import datetime
import os
import sys
import time

import jax

from moe_serve import provenance


def machine():
  """'CPU model, N cores, jax X on platform' for a RESULTS.md heading."""
  cores = len(os.sched_getaffinity(0))
  return f"{provenance.cpu_name()}, {cores} cores, jax {jax.__version__} on " \
         f"{jax.devices()[0].platform}"


def commit():
  """The checkout's short commit, '+dirty' with uncommitted changes (moe_serve.provenance)."""
  return provenance.commit_label(9)


def interleaved_ms(fns, repeats, warmup=2):
  """{name: [ms per call]} for fns = {name: (fn, args) or (fn, args, carry)}: one call of every
  function per round, so that load from other processes on shared cores hits every case alike.
  `carry(args, out)` gives the next call's args (e.g. to thread a donated cache)."""
  state = {name: spec[1] for name, spec in fns.items()}

  def call(name):
    fn, _, *carry = fns[name]
    out = fn(*state[name])
    jax.block_until_ready(out)
    if carry:
      state[name] = carry[0](state[name], out)

  for name in fns:
    for _ in range(warmup):
      call(name)
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name in fns:
      t0 = time.perf_counter()
      call(name)
      times[name].append(1e3 * (time.perf_counter() - t0))
  return times


def report(title, description, header, rows, append_to=None):
  """Prints (and appends to `append_to`) a RESULTS.md section: heading with date and machine,
  the command that ran, `description`, and a markdown table of `rows` (lists of strings)."""
  table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  table += ["| " + " | ".join(r) + " |" for r in rows]
  command = " ".join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:])
  text = (f"\n## {title} ({datetime.date.today().isoformat()}, {machine()}, commit {commit()})\n\n"
          f"`{command}`; {description}\n\n" + "\n".join(table) + "\n")
  print(text)
  if append_to:
    with open(append_to, "a", encoding="utf-8") as fh:
      fh.write(text)
