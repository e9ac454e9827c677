"""Synthetic task domains with exact answers, and the fixed hash split that keeps held-out apart.

Every generator draws from a numpy Generator and returns (prompt, answer). A task example belongs
to the held-out split when a hash of (domain, prompt) falls in the held-out bucket, so the split
is fixed by the example itself: no seed, batch or sampling order can move an example across it.
"""
import hashlib
import string

import numpy as np

TASK_DOMAINS = ("add", "reverse", "sort", "lookup")
HELDOUT_BUCKETS = 10  # 1 in 10 task prompts / text documents is held out


def is_heldout(domain: str, key: str) -> bool:
  """Whether the example (or document) named `key` of `domain` is in the held-out split."""
  digest = hashlib.sha256(f"{domain}\x00{key}".encode("utf-8")).digest()
  return digest[0] % HELDOUT_BUCKETS == 0


def _letters(rng, low, high):
  n = int(rng.integers(low, high + 1))
  return "".join(rng.choice(list(string.ascii_lowercase), size=n))


def add(rng):
  """Multi-digit addition, 1 to 3 digits per operand, answer in normal digit order."""
  a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, 4)))) for _ in range(2))
  return f"{a}+{b}=", str(a + b)


def reverse(rng):
  s = _letters(rng, 3, 8)
  return f"reverse: {s}=", s[::-1]


def sort(rng):
  s = _letters(rng, 3, 8)
  return f"sort: {s}=", "".join(sorted(s))


def lookup(rng):
  """Key-value lookup: 3 to 5 distinct one-letter keys with digit values; ask for one key."""
  n = int(rng.integers(3, 6))
  keys = rng.choice(list(string.ascii_lowercase), size=n, replace=False)
  values = rng.integers(0, 10, size=n)
  query = int(rng.integers(0, n))
  pairs = " ".join(f"{k}:{v}" for k, v in zip(keys, values))
  return f"lookup: {pairs} {keys[query]}=", str(values[query])


GENERATORS = {"add": add, "reverse": reverse, "sort": sort, "lookup": lookup}


def sample(domain, rng, heldout):
  """Draws one (prompt, answer) of `domain` from the requested split (rejection sampling)."""
  gen = GENERATORS[domain]
  while True:
    prompt, answer = gen(rng)
    if is_heldout(domain, prompt) == heldout:
      return prompt, answer
