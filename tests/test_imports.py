"""The import graph points down (docs/design.md): model <- parallel <- (hf <-) loading <- serving
<- experiments <- scripts; metrics are imported by serving and experiments and never import
them; nothing inside moe_serve imports configs/; no import loop between packages. Imports inside
functions count too (a hidden loop is still a loop).
"""
import ast
import os

import pytest

_PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "moe_serve")
# data/ (corpus, tokenizer: plain Python) is the bottom; the top-level modules are the base every
# layer above may use; cli.py is the scripts' entry layer.
_BASE = {"config", "checkpoint", "files", "bundled", "provenance"}
_LOWER = {"base", "data", "model"}
_ALLOWED = {
    "data": {"data"},
    "base": {"base", "data"},
    "model": {"base", "data", "model"},
    "parallel": _LOWER | {"parallel"},
    "hf": _LOWER | {"parallel", "hf"},  # reads HF files, places them with parallel's plan
    "loading": _LOWER | {"parallel", "hf", "loading"},  # the one loading path
    "metrics": _LOWER | {"metrics"},
    "serving": _LOWER | {"parallel", "hf", "loading", "metrics", "serving"},
    "training": _LOWER | {"parallel", "loading", "metrics", "training"},
    "experiments": _LOWER | {"parallel", "hf", "loading", "metrics", "serving", "training",
                             "experiments"},
}
_ALLOWED["cli"] = set(_ALLOWED) | {"cli"}


def _group(module):
  """moe_serve.serving.run -> serving; moe_serve.config -> base; moe_serve.cli -> cli."""
  parts = module.split(".")
  if len(parts) == 1 or parts[1] in _BASE:
    return "base"
  return parts[1]


def _imports():
  """(importing module, imported module) for every import in the package."""
  out = []
  for root, _, files in os.walk(_PKG):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      rel = os.path.relpath(path, os.path.dirname(_PKG))[:-3].replace(os.sep, ".")
      module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          out += [(module, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
          base = node.module
          out += [(module, f"{base}.{a.name}" if base == "moe_serve" else base)
                  for a in node.names]
  return out


def test_no_import_of_configs_inside_the_package():
  bad = [(a, b) for a, b in _imports() if b == "configs" or b.startswith("configs.")]
  assert not bad, bad


def test_imports_point_down():
  bad = []
  for src, dst in _imports():
    if not dst.startswith("moe_serve"):
      continue
    s, d = _group(src), _group(dst)
    if d not in _ALLOWED[s]:
      bad.append(f"{src} ({s}) imports {dst} ({d})")
  assert not bad, "\n".join(bad)


def test_no_loop_between_packages():
  edges = {}
  for src, dst in _imports():
    if dst.startswith("moe_serve") and _group(src) != _group(dst):
      edges.setdefault(_group(src), set()).add(_group(dst))

  def visit(node, path):
    if node in path:
      pytest.fail(f"import loop: {' -> '.join(path[path.index(node):] + [node])}")
    for nxt in edges.get(node, ()):
      visit(nxt, path + [node])

  for node in list(edges):
    visit(node, [])


def test_the_check_sees_an_upward_import():
  """The walker finds imports inside functions (the kind that hid the old loops)."""
  assert ("moe_serve.cli", "moe_serve.serving") in {(a, ".".join(b.split(".")[:2]))
                                                   for a, b in _imports()}
  assert _group("moe_serve.metrics.quality") == "metrics"
  assert "serving" not in _ALLOWED["metrics"]


_WINGS = ("stream", "clock", "loop", "top")  # serving's wings, lowest first; top: run, profiling


def _wing(module):
  parts = module.split(".")
  return parts[2] if len(parts) >= 3 and parts[2] in _WINGS else "top"


def test_serving_wings_import_down():
  """Inside serving/, stream <- clock <- loop <- run.py/profiling.py (docs/design.md)."""
  bad = [(a, b) for a, b in _imports()
         if a.startswith("moe_serve.serving.") and b.startswith("moe_serve.serving.")
         and _WINGS.index(_wing(b)) > _WINGS.index(_wing(a))]
  assert not bad, f"serving wing imports pointing up: {bad}"
  moved = [m for m in ("engine", "clock", "request", "trace", "greedy")
           if os.path.exists(os.path.join(_PKG, "serving", m + ".py"))]
  assert not moved, f"flat serving modules are back: {moved}"
