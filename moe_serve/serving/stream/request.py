"""Requests as they enter the engine, and the checks that accept or reject them.

A bad request is never an exception: `check` returns a reason string, the engine records the
request as rejected with that reason, and the run goes on.
"""
import dataclasses
import math
from typing import NamedTuple

import numpy as np


class SamplingParams(NamedTuple):
  """Per-request sampling. temperature 0 is greedy; top_k 0 and top_p 1 are off."""
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0  # with the token position, the only input to the request's sampling keys


@dataclasses.dataclass(frozen=True)
class Request:
  """One request. `id` doubles as the segment id in the model, so it is an int in [0, 2**31)."""
  id: int
  prompt: tuple  # token ids, BOS included if the source adds one
  max_new_tokens: int
  sampling: SamplingParams = SamplingParams()
  arrival: float = 0.0  # seconds of virtual time
  domain: str = "synthetic"
  priority: int = 0  # smaller is served first under the `priority` policy
  ignore_eos: bool = False  # run to max_new_tokens even past EOS (a study's long completions)

  def __post_init__(self):
    object.__setattr__(self, "prompt", tuple(int(t) for t in np.asarray(self.prompt).reshape(-1)))


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the engine can serve; built once from the config (see `limits_from_config`)."""
  vocab_size: int
  max_len: int
  domains: tuple
  kv_capacity_tokens: int  # kv_num_blocks * kv_block_size


def limits_from_config(cfg):
  s = cfg.serve
  return Limits(vocab_size=cfg.model.vocab_size, max_len=cfg.model.max_len,
                domains=tuple(s.domains), kv_capacity_tokens=s.kv_num_blocks * s.kv_block_size)


def check(req: Request, limits: Limits, seen_ids) -> str | None:
  """Returns None if `req` can be served, else the reason it is rejected (for the logs)."""
  if not isinstance(req.id, (int, np.integer)) or not 0 <= req.id < 2**31:
    return f"id={req.id!r} must be an integer in [0, 2**31) (it is the model's segment id)"
  if req.id in seen_ids:
    return f"duplicate id={req.id}: ids must be unique within a run"
  if not req.prompt:
    return "empty prompt: a request needs at least one prompt token"
  bad = [t for t in req.prompt if not 0 <= t < limits.vocab_size]
  if bad:
    return f"prompt token {bad[0]} outside the vocabulary [0, {limits.vocab_size})"
  if not isinstance(req.max_new_tokens, (int, np.integer)) or req.max_new_tokens <= 0:
    return f"max_new_tokens={req.max_new_tokens!r} must be a positive integer"
  total = len(req.prompt) + req.max_new_tokens
  if total > limits.max_len:
    return (f"prompt ({len(req.prompt)}) + max_new_tokens ({req.max_new_tokens}) = {total} "
            f"exceeds model.max_len={limits.max_len}; shorten the prompt or the output")
  if total - 1 > limits.kv_capacity_tokens:  # the last sampled token is never written to the cache
    return (f"needs {total - 1} KV tokens, more than the whole KV budget "
            f"({limits.kv_capacity_tokens}); raise serve.kv_num_blocks")
  sp = req.sampling
  if not (math.isfinite(sp.temperature) and sp.temperature >= 0):
    return f"temperature={sp.temperature!r} must be a finite number >= 0 (0 is greedy)"
  if not (isinstance(sp.top_k, (int, np.integer)) and sp.top_k >= 0):
    return f"top_k={sp.top_k!r} must be an integer >= 0 (0 is off)"
  if not (isinstance(sp.top_p, (int, float)) and 0 < sp.top_p <= 1):
    return f"top_p={sp.top_p!r} must be in (0, 1] (1 is off)"
  if not (isinstance(sp.seed, (int, np.integer)) and 0 <= sp.seed < 2**32):
    return f"seed={sp.seed!r} must be an integer in [0, 2**32)"
  if not (isinstance(req.arrival, (int, float)) and math.isfinite(req.arrival)
          and req.arrival >= 0):
    return f"arrival={req.arrival!r} must be a finite time >= 0"
  if req.domain not in limits.domains:
    return f"unknown domain {req.domain!r}; configured domains: {list(limits.domains)}"
  if not isinstance(req.priority, (int, np.integer)):
    return f"priority={req.priority!r} must be an integer"
  return None
