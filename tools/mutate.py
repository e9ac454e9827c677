r"""Mutation testing for the core: one-line mutations, each run against the tests that should see it.

Mutated: model/routing.py, model.batch_invariant (model/invariant.py, model/attend.py),
attention windows and sinks (model/attend.py),
serving/sampling.py, serving/scheduler.py, the engine's bookkeeping (serving/engine.py,
serving/buckets.py, serving/records.py, serving/sequence.py), the overlapped loop
(serving/overlap.py and the snapshot/restore it relies on: serving/sequence.py,
serving/run_state.py, serving/scheduler.py), metrics/latency.py and quality aggregation.

    .venv/bin/python tools/mutate.py                  # every mutation, report to stdout
    .venv/bin/python tools/mutate.py --only S1 E3     # some of them
    .venv/bin/python tools/mutate.py --list           # what would be applied

Each mutation replaces one exact snippet of one file (the snippet must occur exactly once, else
the mutation is reported `stale`: the code moved on and the list needs updating). The files are
never mutated in place: the committed tree (`git archive HEAD`) is copied to a temporary
directory, the mutation is applied there, the matching tests run there (`pytest -x`, with a
timeout), and the file is restored in a `finally` before the next mutation. A mutation is
`killed` when the tests fail, `survived` when they pass; survivors are the ones to look at
(docs/testing.md keeps the last report). Not part of CI: it takes tens of minutes.
"""
import argparse
import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

ROUTING_TESTS = ("tests/model/test_routing.py",)
SAMPLING_TESTS = ("tests/serving/test_sampling_and_clock.py",
                  "tests/serving/test_sampling_distribution.py")
FAKE_ENGINE_TESTS = ("tests/serving/test_scheduler_by_hand.py",
                     "tests/serving/test_scheduler_properties.py",
                     "tests/serving/test_virtual_time.py")
PREEMPT_TEST = ("tests/serving/test_engine.py::"
                "test_recompute_preemption_resamples_the_same_tokens_at_temperature",)
OVERLAP_TESTS = ("tests/serving/test_overlap.py",)
SNAPSHOT_TESTS = ("tests/serving/test_snapshot.py",)
_INV = "tests/model/test_invariant.py::"
INVARIANT_TESTS = (  # not the --xla_cpu_max_isa reruns: the same tests, three times the time
    _INV + "test_tiled_matmul_row_bits_do_not_depend_on_rows_or_place",
    _INV + "test_chunked_attention_matches_softmax_attention_and_ignores_kv_len_and_company",
    _INV + "test_a_request_gets_its_solo_bits_at_any_step_shape_slot_and_company")
ATTENTION_OPTION_TESTS = ("tests/model/test_attention_options.py", "tests/model/test_mla.py")
LATENCY_TESTS = ("tests/metrics/test_latency.py", "tests/metrics/test_latency_edges.py",
                 "tests/serving/test_virtual_time.py")


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str
  old: str
  new: str
  tests: tuple
  why: str = ""  # what the mutation breaks


def _m(name, path, old, new, tests, why=""):
  return Mutation(name, path, old, new, tuple(tests), why)


R, S = "moe_serve/model/routing.py", "moe_serve/serving/sampling.py"
C, E = "moe_serve/serving/scheduler.py", "moe_serve/serving/engine.py"
B, RC = "moe_serve/serving/buckets.py", "moe_serve/serving/records.py"
O = "moe_serve/serving/overlap.py"
Q, L = "moe_serve/serving/sequence.py", "moe_serve/metrics/latency.py"
N = "moe_serve/metrics/quality.py"
I, A = "moe_serve/model/invariant.py", "moe_serve/model/attend.py"

MUTATIONS = [
    # ------------------------------------------------------------------ routing
    _m("R1", R, "-((-k * factor_sum_milli) // (num_experts * MILLI))",
       "((k * factor_sum_milli) // (num_experts * MILLI))", ROUTING_TESTS, "capacity floor, not ceil"),
    _m("R2", R, "kept_TxK = valid_TxK & (rank_TxK < cap_T[:, None])",
       "kept_TxK = valid_TxK & (rank_TxK <= cap_T[:, None])", ROUTING_TESTS, "top-k capacity +1"),
    _m("R3", R, "kept_TxE = valid_TxE & (rank_TxE < cap_T[:, None])",
       "kept_TxE = valid_TxE & (rank_TxE <= cap_T[:, None])", ROUTING_TESTS,
       "expert-choice capacity +1"),
    _m("R4", R, "f_T[:num_decode] = factor_milli", "f_T[:num_decode + 1] = factor_milli",
       ROUTING_TESTS, "one prefill position gets the decode factor"),
    _m("R5", R, "order = (~valid_TxK,) + _priority_order(", "order = _priority_order(",
       ROUTING_TESTS, "padding may take capacity"),
    _m("R6", R, '    return (choice_TxK, tok_TxK)\n  # score',
       '    return (tok_TxK, choice_TxK)\n  # score', ROUTING_TESTS, "position priority = token"),
    _m("R7", R, "weight_TxK = weight_TxK / weight_TxK.sum(-1, keepdims=True)",
       "weight_TxK = weight_TxK", ROUTING_TESTS, "renormalize ignored"),
    _m("R8", R, "f_T = jnp.where(segment_ids_T >= 0, f_T, 0)", "f_T = f_T", ROUTING_TESTS,
       "sequence scope counts padding factors"),
    _m("R9", R, "(flat(~valid_TxE), flat(-probs_TxE), flat(tok_TxE))",
       "(flat(~valid_TxE), flat(probs_TxE), flat(tok_TxE))", ROUTING_TESTS,
       "expert choice takes the least probable tokens"),
    _m("R10", R, "return 1.0 - routing.kept.sum() / (n * routing.kept.shape[1])",
       "return 1.0 - routing.kept.sum() / n", ROUTING_TESTS, "drop rate per token, not pair"),
    _m("R11", R, 'return cfg.capacity_scope == "none" or cfg.priority == "token"',
       'return cfg.capacity_scope == "none" or cfg.priority == "position"', ROUTING_TESTS,
       "wrong causality claim"),
    _m("R12", R, "rank_T = jnp.zeros((t,), jnp.int32).at[jnp.argsort(-top1_T, stable=True)]",
       "rank_T = jnp.zeros((t,), jnp.int32).at[jnp.argsort(top1_T, stable=True)]",
       ROUTING_TESTS, "score priority ascending"),
    # ------------------------------------------------------------------ sampling
    _m("S1", S, "scaled_V = logits_V / jnp.maximum(temperature, 1e-6)",
       "scaled_V = logits_V * jnp.maximum(temperature, 1e-6)", SAMPLING_TESTS,
       "temperature applied inverted"),
    _m("S2", S, "key = jax.random.fold_in(jax.random.key(seed), position)",
       "key = jax.random.key(seed + position.astype(jnp.uint32))", SAMPLING_TESTS,
       "key from seed + position: (s, p+1) and (s+1, p) collide"),
    _m("S3", S, "key = jax.random.fold_in(jax.random.key(seed), position)",
       "key = jax.random.key(seed)", SAMPLING_TESTS, "position dropped from the key"),
    _m("S4", S, "keep_V = scaled_V >= desc_V[k - 1]", "keep_V = scaled_V > desc_V[k - 1]",
       SAMPLING_TESTS, "top-k keeps k - 1"),
    _m("S5", S, "n_keep = jnp.maximum(jnp.sum(before_V < top_p), 1)",
       "n_keep = jnp.maximum(jnp.sum(before_V <= top_p), 1)", SAMPLING_TESTS,
       "nucleus boundary inclusive"),
    _m("S6", S, "n_keep = jnp.maximum(jnp.sum(before_V < top_p), 1)",
       "n_keep = jnp.maximum(jnp.sum(before_V < top_p), 0)", SAMPLING_TESTS,
       "empty nucleus possible"),
    _m("S7", S, "k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)",
       "k = jnp.where(top_k > 0, top_k, v)", SAMPLING_TESTS, "top_k > V not clipped"),
    _m("S8", S, "token = jnp.where(temperature > 0, sampled, greedy)",
       "token = jnp.where(temperature >= 0, sampled, greedy)", SAMPLING_TESTS,
       "temperature 0 samples (at 1e-6) instead of argmax"),
    _m("S9", S, "return token, logprobs_V[token]",
       "return token, jax.nn.log_softmax(scaled_V)[token]", SAMPLING_TESTS,
       "logprob after temperature"),
    _m("S10", S, "pre_PxV = jnp.take_along_axis(prefill_PxCxV, batch.last_P[:, None, None], "
       "axis=1)[:, 0]", "pre_PxV = prefill_PxCxV[:, -1]", SAMPLING_TESTS + FAKE_ENGINE_TESTS,
       "prefill token from the chunk's last position, padding or not"),
    _m("S11", S, "probs_desc_V = jax.nn.softmax(jnp.where(jnp.arange(v) < k, desc_V, -jnp.inf))",
       "probs_desc_V = jax.nn.softmax(desc_V)", SAMPLING_TESTS,
       "nucleus mass measured before top-k"),
    # ------------------------------------------------------------------ scheduler
    _m("C1", C, "need = self._blocks_for(seq.num_computed + 1) - seq.blocks",
       "need = self._blocks_for(seq.num_computed) - seq.blocks", FAKE_ENGINE_TESTS,
       "decode block need without the new token"),
    _m("C2", C, "return -(-num_tokens // self.block_size)",
       "return num_tokens // self.block_size", FAKE_ENGINE_TESTS, "blocks rounded down"),
    _m("C3", C, "victim = queue.pop()  #", "victim = queue.pop(0)  #", FAKE_ENGINE_TESTS,
       "preempts the highest-ranked request"),
    _m("C4", C, "if not preempted and (self.batching", "if (self.batching", FAKE_ENGINE_TESTS,
       "admits in a step that preempted"),
    _m("C5", C, "break  # strict policy order", "continue  # strict policy order",
       FAKE_ENGINE_TESTS, "a later request overtakes one that does not fit"),
    _m("C6", C, "budget = self.max_tokens - len(decode)", "budget = self.max_tokens",
       FAKE_ENGINE_TESTS, "token budget ignores decode tokens"),
    _m("C7", C, "while need > self.free_blocks and queue:", "if need > self.free_blocks and queue:",
       FAKE_ENGINE_TESTS, "at most one victim before preempting itself"),
    _m("C8", C, "return (len(req.prompt) + req.max_new_tokens, req.arrival, req.id)",
       "return (len(req.prompt), req.arrival, req.id)", FAKE_ENGINE_TESTS,
       "sjf ignores the output length"),
    _m("C9", C, "return (req.priority, req.arrival, req.id)",
       "return (-req.priority, req.arrival, req.id)", FAKE_ENGINE_TESTS, "priority inverted"),
    _m("C10", C, "need = self._blocks_for(len(seq.tokens))",
       "need = self._blocks_for(len(seq.req.prompt))", FAKE_ENGINE_TESTS,
       "re-admission reserves the prompt only"),
    _m("C11", C, 'self.batching == "continuous" or static_idle',
       'self.batching == "continuous" or True', FAKE_ENGINE_TESTS, "static batches refill"),
    # ------------------------------------------------------------------ engine bookkeeping
    _m("E1", B, "samp.set_row(i, seq.req.sampling, n + 1)", "samp.set_row(i, seq.req.sampling, n)",
       PREEMPT_TEST, "decode row's sampling position off by one"),
    _m("E2", B, "    kv += n + 1\n", "    kv += n\n", FAKE_ENGINE_TESTS,
       "decode attended_kv without its own key"),
    _m("E3", B, "kv += n * start + n * (n + 1) // 2", "kv += n * start + n * (n - 1) // 2",
       FAKE_ENGINE_TESTS, "prefill attended_kv n(n-1)/2"),
    _m("E4", B, "samp.last_P[j] = n - 1", "samp.last_P[j] = n", FAKE_ENGINE_TESTS,
       "prefill token read one past the chunk"),
    _m("E5", B, "samp.set_row(b + j, seq.req.sampling, start + n)",
       "samp.set_row(b + j, seq.req.sampling, start + n - 1)", PREEMPT_TEST,
       "prefill row's sampling position off by one"),
    _m("E6", E, "elif len(seq.outputs) >= seq.req.max_new_tokens:",
       "elif len(seq.outputs) > seq.req.max_new_tokens:", FAKE_ENGINE_TESTS, "one token too many"),
    _m("E7", RC, "slots_used=len(sched.running) + sum(1 for s in in_step if s.finish_reason)",
       "slots_used=len(sched.running)", FAKE_ENGINE_TESTS, "finishing requests not counted"),
    _m("E8", "moe_serve/serving/step_cost.py", "    t = b + p * c\n", "    t = b + p\n",
       ("tests/serving/test_sampling_and_clock.py",), "step tokens B + P (fixed-shape expert rows)"),
    _m("E9", E, "self._emit(seq, tok(i), lp(i), now)", "self._emit(seq, tok(i), lp(i), now - dt)",
       FAKE_ENGINE_TESTS, "decode tokens stamped at the step start"),
    _m("E10", E, "self.sched, self.clock.now = self._new_scheduler(), 0.0",
       "self.sched = self._new_scheduler()", FAKE_ENGINE_TESTS, "clock not reset between runs"),
    _m("E11", RC, "lo = max(seq.num_computed, len(seq.prompt_logprobs))", "lo = seq.num_computed",
       ("tests/serving/test_engine.py::test_prompt_logprobs_match_a_full_forward",),
       "recomputed prompt positions scored twice"),
    _m("E12", E, "blocks_in_step = sched.blocks_used  #", "blocks_in_step = 0  #",
       FAKE_ENGINE_TESTS, "kv_blocks_used not logged"),
    _m("E13", RC, "decode=len(plan.decode), prefill_rows", "decode=len(plan.prefill), prefill_rows",
       FAKE_ENGINE_TESTS, "decode count logged wrong"),
    _m("Q1", Q, "self.num_computed, self.prefilled = 0, False", "self.num_computed = 0",
       FAKE_ENGINE_TESTS, "preempted request still marked prefilled"),
    _m("Q2", Q, "self.preemptions += 1", "self.preemptions += 0", FAKE_ENGINE_TESTS,
       "preemptions not counted"),
    _m("Q3", Q, "if self.admitted_at is None:\n      self.admitted_at, self.cached_tokens = now",
       "if True:\n      self.admitted_at, self.cached_tokens = now", FAKE_ENGINE_TESTS,
       "admission time is the last admission"),
    _m("Q4", Q, "if self.num_computed == len(self.tokens):",
       "if self.num_computed >= len(self.tokens) - 1:", FAKE_ENGINE_TESTS,
       "prefill ends one token early"),
    _m("Q5", Q, "self.drops = per_layer if self.drops is None else",
       "self.drops = per_layer if True else",
       ("tests/serving/test_engine.py::test_routing_records_attribute_drops_to_requests",),
       "drops overwritten, not summed"),
    # ------------------------------------------------------------------ overlapped loop
    _m("O2", O, "return same_batch((fed, ahead.samp), (step.batch, step.samp))",
       "return True", OVERLAP_TESTS, "a step launched ahead kept whatever its inputs"),
    _m("O3", Q, "      setattr(self, name, value)\n", "      pass\n", OVERLAP_TESTS,
       "sequences' fields not restored after planning ahead"),
    _m("O4", O,
       "return xp.where(tokens_Bx1 < 0, xp.take(prev_tokens_R, src_Bx1), tokens_Bx1)",
       "return xp.maximum(tokens_Bx1, 0)", OVERLAP_TESTS, "placeholders fed as token 0"),
    _m("O5", "moe_serve/serving/run_state.py", "    del self.seqs[num_seqs:]\n", "    pass\n",
       OVERLAP_TESTS, "requests that arrived while planning ahead not forgotten"),
    _m("O6", C, "      self.cache.restore(cache)\n", "      pass\n", SNAPSHOT_TESTS,
       "the prefix cache's table not restored (overlap refuses the prefix cache today)"),
    # ------------------------------------------------------------------ quality aggregation
    _m("N1", N, 'nll = {d: sum(r["nll_sum"] for r in rs) / max(1, sum(r["tokens"] for r in rs))',
       'nll = {d: float(np.mean([r["nll_sum"] / r["tokens"] for r in rs]))',
       ("tests/metrics/test_quality_aggregation.py",), "NLL averaged per example, not pooled"),
    _m("N2", N, '"exact_match_mean": float(np.mean(list(exact.values()))) if exact else None',
       '"exact_match_mean": float(np.mean([r["correct"] for r in records if "correct" in r]))'
       ' if exact else None', ("tests/metrics/test_quality_aggregation.py",),
       "exact-match mean pooled over examples"),
    # ------------------------------------------------------------------ latency metrics
    _m("L1", L, "tpot = (e2el - ttft) / (n - 1) if n > 1 else None",
       "tpot = (e2el - ttft) / n if n > 1 else None", LATENCY_TESTS, "TPOT over n"),
    _m("L2", L, 'ttft = rec["first_token"] - rec["arrival"]',
       'ttft = rec["first_token"] - rec["admitted"]', LATENCY_TESTS, "TTFT from admission"),
    _m("L3", L, "if n > 1 else None", "if n > 2 else None", LATENCY_TESTS,
       "two-token requests get no TPOT"),
    _m("L4", L, "ok_tpot = slo_tpot_ms is None or (tpot or 0.0) * 1e3 <= slo_tpot_ms",
       "ok_tpot = slo_tpot_ms is None or (tpot or 0.0) * 1e3 < slo_tpot_ms", LATENCY_TESTS,
       "TPOT SLO strict"),
    _m("L5", L, 'min(r["arrival"] for r in done)) if done', 'min(r["first_token"] for r in done))'
       ' if done', LATENCY_TESTS, "duration from the first token"),
    _m("L6", L, "good += ok_ttft and ok_tpot", "good += ok_ttft or ok_tpot", LATENCY_TESTS,
       "goodput needs one SLO only"),
    _m("L7", L, "itls = np.diff(np.asarray(rec[\"token_times\"], np.float64)).tolist()",
       "itls = np.diff(np.asarray(rec[\"token_times\"], np.float64))[1:].tolist()",
       LATENCY_TESTS, "first ITL dropped"),
    # ------------------------------------------------------------------ model.batch_invariant
    _m("I1", I, "g = max(-(-t // tile), 2)", "g = max(-(-t // tile), 1)", INVARIANT_TESTS,
       "a one-tile loop is inlined and may fuse with its neighbours"),
    _m("I2", A, "read = attend_cache_chunked if invariant_mode else attend_cache",
       "read = attend_cache", INVARIANT_TESTS, "the cache read over kv_len in one reduction"),
    _m("I3", A, "jnp.full(state_shape, -jnp.inf, jnp.float32)",
       "jnp.zeros(state_shape, jnp.float32)", INVARIANT_TESTS,
       "online softmax starts from max 0 (overflow-prone, not exact)"),
    _m("I5", A, "    init_sum = jnp.ones(state_shape, jnp.float32)",
       "    init_sum = jnp.zeros(state_shape, jnp.float32)", ATTENTION_OPTION_TESTS,
       "the chunked softmax leaves the sink's own term out of the sum"),
    _m("I6", A, "mask &= key_pos_xJ[..., None, :] > query_pos_xL[..., :, None] - window",
       "mask &= key_pos_xJ[..., None, :] >= query_pos_xL[..., :, None] - window",
       ATTENTION_OPTION_TESTS, "a window one key wider than HF's"),
    _m("I4", I, "  if not invariant:\n    return jnp.tensordot(x, w, axes)",
       "  if True:\n    return jnp.tensordot(x, w, axes)", INVARIANT_TESTS,
       "projections and LM head as one matmul over the step's rows"),
    _m("L8", L, 'classes = sorted({r.get("priority", 0) for r in done})',
       'classes = sorted({r.get("priority", 1) for r in done})', LATENCY_TESTS,
       "missing priority defaults to 1"),
]


def _copy_tree(dest):
  """The committed tree (HEAD) under `dest`: never the working tree others are editing."""
  archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], check=True,
                           capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def _pytest(tree, tests, timeout_s, deselect):
  cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
  for node in deselect:
    cmd += ["--deselect", node]
  env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
  try:
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return "timeout", ""
  tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
  outcome = {0: "passed", 1: "failed"}.get(proc.returncode, f"error(rc={proc.returncode})")
  return outcome, tail[0]


def run_one(tree, mut, timeout_s, deselect):
  """Applies `mut` in `tree`, runs its tests, restores the file (always). Returns a dict."""
  path = tree / mut.path
  original = path.read_text()
  if original.count(mut.old) != 1:
    return dict(status="stale", detail=f"snippet found {original.count(mut.old)} times")
  t0 = time.time()
  try:
    path.write_text(original.replace(mut.old, mut.new))
    outcome, detail = _pytest(tree, mut.tests, timeout_s, deselect)
  finally:
    path.write_text(original)
  assert path.read_text() == original
  # rc 1 is a failing test; other codes (collection or usage errors) need a look, not a kill.
  status = {"passed": "survived", "failed": "killed", "timeout": "killed(timeout)"}.get(
      outcome, outcome)
  return dict(status=status, detail=detail, seconds=round(time.time() - t0, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", nargs="*", help="mutation names to run (default: all)")
  parser.add_argument("--list", action="store_true", help="print the mutations and exit")
  parser.add_argument("--timeout_s", type=int, default=600, help="per pytest run")
  parser.add_argument("--deselect", nargs="*", default=[],
                      help="test node ids to leave out (e.g. known failures on this machine)")
  args = parser.parse_args()
  muts = [m for m in MUTATIONS if not args.only or m.name in args.only]
  if args.list:
    for m in muts:
      print(f"{m.name:4} {m.path}: {m.why}\n     - {m.old!r}\n     + {m.new!r}")
    return 0
  with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
    tree = pathlib.Path(tmp)
    _copy_tree(tree)
    # The unmutated tests must pass, or every mutant would look killed.
    baseline = sorted({t for m in muts for t in m.tests})
    outcome, detail = _pytest(tree, baseline, args.timeout_s * 3, args.deselect)
    print(f"baseline ({len(baseline)} test targets): {outcome} {detail}", flush=True)
    if outcome != "passed":
      return 1
    results = []
    for m in muts:
      res = run_one(tree, m, args.timeout_s, args.deselect)
      results.append((m, res))
      print(f"{m.name:4} {res['status']:16} {res.get('seconds', '-'):>6}s  {m.path}: {m.why}"
            f"  | {res['detail']}", flush=True)
    survivors = [m for m, r in results if r["status"] == "survived"]
    stale = [m for m, r in results if r["status"] == "stale"]
    killed = [m for m, r in results if r["status"].startswith("killed")]
    print(f"\n{len(results)} mutations: {len(killed)} killed, {len(survivors)} survived, "
          f"{len(stale)} stale, {len(results) - len(killed) - len(survivors) - len(stale)} other")
    for m in survivors:
      print(f"SURVIVED {m.name} {m.path}: {m.why}\n  - {m.old!r}\n  + {m.new!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
