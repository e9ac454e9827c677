"""Reads the collectives out of compiled HLO text, to check what a sharded program communicates."""
import re
from typing import NamedTuple

_KINDS = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute",
          "ragged-all-to-all")
_OP = re.compile(r"= (.+?) (" + "|".join(_KINDS) + r")(?:-start)?\(")
_NAME = re.compile(r'op_name="([^"]*)"')


class Collective(NamedTuple):
  kind: str  # e.g. "all-to-all"
  shape: str  # result shape(s) as HLO prints them (per device)
  op_name: str  # the jax op it came from, e.g. "jit(step)/Decoder/block_0/moe/tec,ecd->td/..."


def collectives(hlo_text):
  """Every collective in `compiled.as_text()`, in program order (async pairs counted once)."""
  out = []
  for line in hlo_text.splitlines():
    if "-done(" in line:
      continue
    m = _OP.search(line)
    if m:
      name = _NAME.search(line)
      out.append(Collective(m.group(2), m.group(1), name.group(1) if name else ""))
  return out
