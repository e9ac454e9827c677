"""The maps match the house: every repository path (`tests/...`, `moe_serve/...`, `scripts/...`,
...) and every dotted `moe_serve.x.y` name that the README, BUILD.md, MODEL.md, RESULTS.md and
docs/ mention exists (a glob like `profiles/gather-cpu-*.json` must match something)."""
import glob
import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "BUILD.md", "MODEL.md", "benchmarks/RESULTS.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
_DIRS = "tests|moe_serve|scripts|configs|benchmarks|tools|docs|models"
_PATH = re.compile(rf"(?<![\w/.:-])((?:{_DIRS})/[\w./*-]*[\w*])")
_DOTTED = re.compile(r"(?<![\w./])(moe_serve(?:\.[a-z_][a-z0-9_]*)+)")


def _mentions(pattern):
  for doc in DOCS:
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
      for line_no, line in enumerate(f, 1):
        for m in pattern.finditer(line):
          yield f"{doc}:{line_no}", m.group(1).rstrip(".")


def _resolves(dotted):
  """Whether `moe_serve.a.b.c` is a module or an attribute of the longest importable prefix."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    for name in parts[i:]:
      if not hasattr(obj, name):
        return False
      obj = getattr(obj, name)
    return True
  return False


def test_every_path_named_in_the_docs_exists():
  missing = [f"{where}: {path}" for where, path in _mentions(_PATH)
             if not glob.glob(os.path.join(ROOT, path.split("::")[0]))]
  assert not missing, "\n".join(missing)


def test_every_module_name_in_the_docs_resolves():
  missing = [f"{where}: {name}" for where, name in _mentions(_DOTTED) if not _resolves(name)]
  assert not missing, "\n".join(missing)
