"""Prose and code documents from the interpreter's own standard library (offline, deterministic).

Prose is the pydoc topic help (`pydoc_data.topics`); code is the source of the top-level pure
Python modules of the standard library. Both change with the interpreter version, so the corpus
hash (corpus.py) records what a run actually saw, and the committed eval set does not depend on it.
"""
import os
import sysconfig

from moe_serve.data import tasks

TEXT_DOMAINS = ("prose", "code")
_MAX_CODE_BYTES = 200_000  # skip the few huge generated modules (e.g. pydoc topics themselves)


def prose_documents():
  """{topic name: text} of the interpreter's pydoc topics, sorted by name."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  return {name: topics.topics[name] for name in sorted(topics.topics)}


def code_documents():
  """{module file name: source} of the top-level stdlib modules, sorted by name."""
  stdlib = sysconfig.get_paths()["stdlib"]
  docs = {}
  for name in sorted(os.listdir(stdlib)):
    path = os.path.join(stdlib, name)
    if name.endswith(".py") and os.path.getsize(path) <= _MAX_CODE_BYTES:
      with open(path, encoding="utf-8", errors="replace") as f:
        docs[name] = f.read()
  return docs


def documents(domain):
  """The documents of a text domain."""
  if domain == "prose":
    return prose_documents()
  if domain == "code":
    return code_documents()
  raise ValueError(f"text domain {domain!r} is not one of {list(TEXT_DOMAINS)}")


def split_documents(domain, docs):
  """(train, heldout) lists of (name, text); a whole document sits in one split."""
  train, heldout = [], []
  for name, text in docs.items():
    (heldout if tasks.is_heldout(domain, name) else train).append((name, text))
  if not train or not heldout:
    raise ValueError(f"{domain}: the hash split left an empty side ({len(train)} train, "
                     f"{len(heldout)} held-out documents); the corpus needs more documents")
  return train, heldout


def window(rng, docs, chars):
  """A random window of up to `chars` characters from a random document of `docs`."""
  _, text = docs[int(rng.integers(0, len(docs)))]
  start = int(rng.integers(0, max(1, len(text) - chars)))
  return text[start:start + chars]
