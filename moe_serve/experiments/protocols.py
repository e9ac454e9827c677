"""The peers' batch-invariance protocols, reproduced on our engine (issue 26, item 4).

Each protocol serves greedy (or seeded) requests that all arrive at virtual time 0, so they share
steps: batch composition, step shapes (prefill rows, kv buckets) and slots vary with the load.
A request's output is its tokens (and log-probs); a protocol passes when every prompt has exactly
one unique output over all its runs.
- `needle` (vLLM test_batch_invariance.py, needle): one prompt alone, then at a random row of
  `trials` batches of random filler prompts, batch sizes drawn from 2..max(batch_sizes); greedy.
- `bitwise` (vLLM, bs=1 vs bs=N): `num_prompts` prompts each alone, then all together in a shuffled
  order, temperature > 0 with a seed per request; tokens AND log-probs must match bitwise.
- `single` (SGLang test_deterministic.py): one prompt repeated in batches of `batch_sizes`.
- `mixed` (SGLang): `num_prompts` different prompts, `trials` batches of random compositions.
- `prefix` (SGLang): prompts sharing prefixes of different lengths (1/k .. k/k of a long prompt)
  with different tails, in `trials` batches of random compositions.
Greedy protocols count unique token sequences (the peers compare text); the table also gives the
unique log-prob sequences. Prompts are eval-set texts (moe_serve/data/eval_prompts.jsonl) joined
by newlines and encoded by the served model's tokenizer (bytes, or an HF directory's
tokenizer.json), of random lengths up to `max_prompt_len` tokens; filler prompts are drawn alike.

Settings (SETTINGS): `invariant` (model.batch_invariant on, capacity_scope none), `off` (the same
with it off: nothing is claimed), `invariant_batch` (on, scope batch at capacity factor 1.0:
a token's expert depends on the other tokens of the step, so outputs are expected to diverge) and
`invariant_cache` (`invariant` with serve.prefix_cache kept warm across the protocol's runs: a
prompt reuses blocks computed in earlier batches of other compositions, SGLang's prefix mode
with its radix cache; docs/design.md contract 7) and `invariant_batch_cache` (the same with scope
batch: a reused block carries the routing of the batch that computed it).

Axis letters are not needed here: everything is lists of token ids per request.
"""
import copy
import json
import os
from typing import NamedTuple

import numpy as np

from moe_serve import config as config_lib
from moe_serve import files
from moe_serve.data import eval_prompts
from moe_serve.experiments import settings
from moe_serve.serving import run as run_lib
from moe_serve.serving.stream.request import Request, SamplingParams

PROTOCOLS = ("needle", "bitwise", "single", "mixed", "prefix")


class Setting(NamedTuple):
  name: str
  batch_invariant: bool
  capacity_scope: str
  capacity_factor: float | None  # None: the config's
  expected: str  # what the contracts claim (docs/design.md, contracts 2 and 7)
  prefix_cache: bool = False  # kept warm across the runs


SETTINGS = (
    Setting("invariant", True, "none", None, "1 unique (contract 2)"),
    Setting("off", False, "none", None, "not claimed"),
    Setting("invariant_batch", True, "batch", 1.0, "diverges (routing)"),
    Setting("invariant_cache", True, "none", None, "1 unique (contract 7)", True),
    Setting("invariant_batch_cache", True, "batch", 1.0, "diverges (routing, cached blocks)",
            True),
)


class Sizes(NamedTuple):
  trials: int = 4  # needle, mixed and prefix batches
  batch_sizes: tuple = (1, 2, 4, 8, 16)  # single's batches; needle and mixed draw up to the largest
  num_prompts: int = 4  # bitwise, mixed and prefix prompts
  max_new_tokens: int = 16
  max_prompt_len: int = 160  # serve_default's prompt_len high: prompts reach every kv bucket
  temperature: float = 0.8  # bitwise only
  seed: int = 0


def setting_config(cfg, setting):
  """A copy of a resolved serve config with `setting`'s mode and router scope, validated. The
  clock uses the config's round `coef` (no clock profile): every request arrives at t=0, so
  virtual time changes no batch, and a profile exists only for some step options."""
  cfg = copy.deepcopy(cfg)
  cfg.clock.profile = ""
  cfg.model.batch_invariant = setting.batch_invariant
  cfg.serve.prefix_cache = setting.prefix_cache
  settings.set_capacity(cfg, setting.capacity_scope, setting.capacity_factor)
  return config_lib.validate_for(cfg, "serve")


class Prompts:
  """Prompts of eval-set texts (joined by newlines until long enough) encoded by `tok`, of
  random lengths up to `max_len` tokens, so that they span the config's kv buckets."""

  def __init__(self, tok, max_len):
    self.tok, self.max_len = tok, max_len
    self.texts = [ex.prompt for ex in eval_prompts.load()]

  def _ids(self, length, rng, bos=True):
    text = ""
    while True:
      text += ("\n" if text else "") + self.texts[int(rng.integers(len(self.texts)))]
      ids = list(self.tok.encode(text, bos=bos))
      if len(ids) >= length:
        return ids[:length]

  def distinct(self, n, rng):
    """`n` prompts of random texts and lengths (4..max_len tokens)."""
    return [self._ids(int(rng.integers(min(4, self.max_len), self.max_len + 1)), rng)
            for _ in range(n)]

  def with_prefixes(self, n, rng):
    """`n` prompts: the first i/n of one prompt of max_len/2 tokens (i = 1..n), each with a
    different tail of random length."""
    head = self._ids(self.max_len // 2, rng)
    out = []
    for i in range(1, n + 1):
      shared = head[:max(1, len(head) * i // n)]
      room = self.max_len - len(shared)
      out.append(shared + self._ids(int(rng.integers(1, max(room, 1) + 1)), rng, bos=False))
    return out


class Runner:
  """Runs batches (lists of (prompt key, ids, sampling)) on one engine, all at t=0, and keeps
  every output per key, and the step shapes seen. Requests carry the first configured domain
  (a label for the records; it changes nothing in the step)."""

  def __init__(self, engine, max_new_tokens, progress=None):
    self.engine, self.max_new_tokens, self.progress = engine, max_new_tokens, progress
    self.outputs, self.shapes, self.runs, self.requests = {}, set(), 0, 0
    self.cached_tokens = 0

  def __call__(self, batch):
    domain = self.engine.cfg.serve.domains[0]
    reqs = [Request(id=i, prompt=ids, max_new_tokens=self.max_new_tokens, sampling=sp,
                    ignore_eos=True, domain=domain) for i, (_, ids, sp) in enumerate(batch)]
    log = self.engine.run(reqs, warm_prefix_cache=True)  # a no-op without a prefix cache
    recs = {r["id"]: r for r in log.requests}
    for i, (key, _, _) in enumerate(batch):
      rec = recs[i]
      if rec.get("status", "finished") != "finished" or "tokens" not in rec:
        raise RuntimeError(f"request {i} of a protocol batch did not finish: {rec}")
      self.outputs.setdefault(key, []).append(
          (tuple(rec["tokens"]), tuple(float(x) for x in rec["logprobs"])))
    self.shapes |= {tuple(s["bucket"]) + (s["kv_len"],) for s in log.steps}
    self.cached_tokens += sum(r.get("cached_tokens") or 0 for r in log.requests)
    self.runs += 1
    self.requests += len(batch)
    if self.progress is not None:
      self.progress(len(batch))

  def result(self, protocol, setting, keys, compare_logprobs=False):
    """One table row: unique outputs per prompt key (tokens, and log-probs)."""
    outs = [self.outputs[k] for k in keys]
    tok = max(len({t for t, _ in o}) for o in outs)
    lps = max(len(set(o)) for o in outs)
    unique = lps if compare_logprobs else tok
    return dict(protocol=protocol, setting=setting.name, expected=setting.expected,
                passed=unique == 1, unique_max=unique, unique_tokens_max=tok,
                unique_logprobs_max=lps, prompts=len(keys),
                appearances_min=min(len(o) for o in outs), runs=self.runs,
                requests=self.requests, step_shapes=len(self.shapes),
                cached_tokens=self.cached_tokens,
                compared="tokens+logprobs" if compare_logprobs else "tokens")


_GREEDY = SamplingParams()


def needle(run, prompts, sizes, rng):
  needle_ids = prompts.distinct(1, rng)[0]
  run([("needle", needle_ids, _GREEDY)])
  for _ in range(sizes.trials):
    size = int(rng.integers(2, max(max(sizes.batch_sizes), 2) + 1))
    batch = [("filler", ids, _GREEDY) for ids in prompts.distinct(size - 1, rng)]
    batch.insert(int(rng.integers(size)), ("needle", needle_ids, _GREEDY))
    run(batch)
  return ["needle"], False


def bitwise(run, prompts, sizes, rng):
  batch = [(k, ids, SamplingParams(temperature=sizes.temperature, seed=1000 + k))
           for k, ids in enumerate(prompts.distinct(sizes.num_prompts, rng))]
  for item in batch:
    run([item])
  run([batch[i] for i in rng.permutation(len(batch))])
  return list(range(len(batch))), True


def single(run, prompts, sizes, rng):
  ids = prompts.distinct(1, rng)[0]
  for size in sizes.batch_sizes:
    run([("single", ids, _GREEDY)] * size)
  return ["single"], False


def _compositions(run, items, sizes, rng):
  """All `items` in one batch, then `trials` batches of random compositions (sizes cycling
  through batch_sizes), then each item seen only once so far alone: every item runs in at least
  two different batches."""
  run([(i, ids, _GREEDY) for i, ids in enumerate(items)])
  for t in range(sizes.trials):
    size = sizes.batch_sizes[t % len(sizes.batch_sizes)]
    run([(int(i), items[i], _GREEDY) for i in rng.integers(len(items), size=size)])
  for i, ids in enumerate(items):
    if len(run.outputs[i]) < 2:
      run([(i, ids, _GREEDY)])
  return list(range(len(items))), False


def mixed(run, prompts, sizes, rng):
  return _compositions(run, prompts.distinct(sizes.num_prompts, rng), sizes, rng)


def prefix(run, prompts, sizes, rng):
  return _compositions(run, prompts.with_prefixes(sizes.num_prompts, rng), sizes, rng)


_FNS = dict(needle=needle, bitwise=bitwise, single=single, mixed=mixed, prefix=prefix)


def run_protocols(cfg, params, tok, protocols=PROTOCOLS, settings=SETTINGS, sizes=Sizes(),
                  log=print):
  """Every protocol under every setting; returns the table rows (dicts). `cfg` is a resolved,
  validated serve config; `params` its parameters (shared by every setting's engine: the
  settings change how the step computes, not the weights); `tok` its tokenizer."""
  unknown = set(protocols) - set(PROTOCOLS)
  if unknown:
    raise config_lib.ConfigError(f"unknown protocols {sorted(unknown)}; have {PROTOCOLS}")
  prompts = Prompts(tok, sizes.max_prompt_len)
  rows = []
  for setting in settings:
    engine = run_lib.build_engine(setting_config(cfg, setting), params=params)
    for p in protocols:
      rng = np.random.default_rng([sizes.seed, PROTOCOLS.index(p)])  # same prompts per setting
      run = Runner(engine, sizes.max_new_tokens,
                   progress=lambda n: log(f"  {p} / {setting.name}: run {run.runs} ({n} requests)"))
      keys, compare_logprobs = _FNS[p](run, prompts, sizes, rng)
      rows.append(run.result(p, setting, keys, compare_logprobs))
      r = rows[-1]
      log(f"{p} / {setting.name}: {'pass' if r['passed'] else 'FAIL'} (unique max "
          f"{r['unique_max']}, {r['prompts']} prompts, {r['runs']} runs, {r['step_shapes']} "
          "step shapes)")
  return rows


_COLUMNS = (("protocol", "protocol"), ("setting", "setting"), ("expected", "expected"),
            (None, "result"), ("unique_max", "unique outputs max"),
            ("unique_logprobs_max", "unique log-probs max"), ("compared", "compared"),
            ("prompts", "prompts"), ("appearances_min", "runs per prompt min"),
            ("runs", "runs (batches)"), ("requests", "requests"), ("step_shapes", "step shapes"),
            ("cached_tokens", "cached prompt tokens"))


def markdown(rows):
  """The rows as a markdown table."""
  head = [title for _, title in _COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [("pass" if r["passed"] else "FAIL") if key is None else str(r[key])
             for key, _ in _COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write(workdir, rows, header=(), meta=None):
  """`<workdir>/protocols.md` (header lines, then the table) and `protocols.json` ({"meta",
  "rows"}); returns the markdown."""
  os.makedirs(workdir, exist_ok=True)
  text = "".join(f"{line}\n" for line in header) + ("\n" if header else "") + markdown(rows)
  files.write_text_atomic(os.path.join(workdir, "protocols.md"), text)
  files.write_text_atomic(os.path.join(workdir, "protocols.json"),
                          json.dumps(dict(meta=meta or {}, rows=rows), indent=1) + "\n")
  return text
