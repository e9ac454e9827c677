"""The multi-domain corpus: four task domains with exact answers, English prose and Python code.

Every example is an `Example(domain, prompt, answer)`. For tasks the loss and the exact-match check
are on the answer; for text the training example is a window (empty prompt) and the held-out
example is a prompt followed by its continuation, scored by NLL. The train / held-out split is
fixed by a hash of the task prompt or the document name (tasks.is_heldout), never by the seed.
"""
import dataclasses
import hashlib
import inspect
import sys

import numpy as np

from moe_serve.data import tasks, text

DOMAINS = tasks.TASK_DOMAINS + text.TEXT_DOMAINS
HELDOUT_PROMPT_CHARS = 64  # text held-out: prompt and continuation lengths, in characters
HELDOUT_ANSWER_CHARS = 64


@dataclasses.dataclass(frozen=True)
class Example:
  domain: str
  prompt: str
  answer: str

  @property
  def is_task(self):
    return self.domain in tasks.TASK_DOMAINS


class Corpus:
  """Deterministic sampler over the six domains; the same seed gives the same examples."""

  def __init__(self, seed: int):
    self.seed = int(seed)
    self.text_splits = {d: text.split_documents(d, text.documents(d)) for d in text.TEXT_DOMAINS}

  def info(self):
    """What a training log must record: interpreter version, corpus hash, document counts."""
    return {
        "python": sys.version.split()[0],
        "corpus_hash": self.hash(),
        "corpus_seed": self.seed,
        "documents": {d: {"train": len(tr), "heldout": len(he)}
                      for d, (tr, he) in self.text_splits.items()},
    }

  def hash(self):
    """sha256 over the task generators' source and every text document (name and content)."""
    h = hashlib.sha256(inspect.getsource(tasks).encode("utf-8"))
    for domain, (train, heldout) in sorted(self.text_splits.items()):
      for split, docs in (("train", train), ("heldout", heldout)):
        for name, body in docs:
          h.update(f"\x00{domain}\x00{split}\x00{name}\x00".encode("utf-8"))
          h.update(body.encode("utf-8"))
    return h.hexdigest()[:16]

  def sample(self, rng, domain, text_chars, heldout=False):
    """One example of `domain`; text examples are `text_chars`-character windows."""
    if domain in tasks.TASK_DOMAINS:
      return Example(domain, *tasks.sample(domain, rng, heldout))
    if domain in self.text_splits:
      docs = self.text_splits[domain][1 if heldout else 0]
      return Example(domain, "", text.window(rng, docs, text_chars))
    raise ValueError(f"domain {domain!r} is not one of {list(DOMAINS)}")

  def heldout(self, domain, n):
    """`n` fixed held-out examples of `domain` (depends on the seed and domain only).

    Task prompts are distinct; text examples are a 64-character prompt and its continuation.
    """
    rng = np.random.default_rng([self.seed, 1 + DOMAINS.index(domain), 7919])
    out, seen = [], set()
    if domain in tasks.TASK_DOMAINS:
      for _ in range(100 * n):
        ex = self.sample(rng, domain, 0, heldout=True)
        if ex.prompt not in seen:
          seen.add(ex.prompt)
          out.append(ex)
        if len(out) == n:
          return out
      raise ValueError(f"could not draw {n} distinct held-out {domain} prompts; ask for fewer")
    chars = HELDOUT_PROMPT_CHARS + HELDOUT_ANSWER_CHARS
    while len(out) < n:
      w = self.sample(rng, domain, chars, heldout=True).answer
      if len(w) == chars:
        out.append(Example(domain, w[:HELDOUT_PROMPT_CHARS], w[HELDOUT_PROMPT_CHARS:]))
    return out
