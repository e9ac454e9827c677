"""model.batch_invariant: a row's bits never depend on the step's shape, its place or its company.

Random inputs, many row counts, places, chunk lengths and kv lengths; the same tests run again in
subprocesses with XLA told to use fewer vector instructions (`--xla_cpu_max_isa`), since which
kernels XLA:CPU picks, and so which sums a shape changes, differs between hosts. With the mode off
these comparisons are allowed to differ (and do on some hosts: docs/serving.md).
"""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import serve_default
from moe_serve.model import api, attend, invariant, parts
from moe_serve.model.parts import Part, StepBatch
from moe_serve.parallel import steps

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_IN_SUBPROCESS = "MOE_SERVE_ISA_RUN" in os.environ


@pytest.mark.parametrize("axes", [1, 2])
def test_tiled_matmul_row_bits_do_not_depend_on_rows_or_place(axes):
  rng = np.random.default_rng(axes)
  w = jnp.asarray(rng.standard_normal((8, 16, 96) if axes == 2 else (128, 96)), jnp.float32)
  x_in = (8, 16) if axes == 2 else (128,)
  probe = jnp.asarray(rng.standard_normal((1,) + x_in), jnp.float32)
  f = jax.jit(lambda x: invariant.matmul(x, w, True, axes))
  solo = np.asarray(f(probe))[0]
  for t in (2, 15, 16, 17, 33, 64, 100):
    x = jnp.asarray(rng.standard_normal((t,) + x_in), jnp.float32)
    at = int(rng.integers(t))
    y = np.asarray(f(x.at[at].set(probe[0])))
    np.testing.assert_array_equal(y[at], solo, err_msg=f"T={t}, row {at}")
  # Off: one matmul, the same function (within float32 rounding).
  np.testing.assert_allclose(np.asarray(invariant.matmul(probe, w, False, axes))[0], solo,
                             rtol=1e-5, atol=1e-5)


def _cache(rng, num_slots, max_len, m, h):
  return {"k": jnp.asarray(rng.standard_normal((num_slots, m, h, max_len)), jnp.float32),
          "v": jnp.asarray(rng.standard_normal((num_slots, m, max_len, h)), jnp.float32)}


def test_chunked_attention_matches_softmax_attention_and_ignores_kv_len_and_company():
  rng = np.random.default_rng(0)
  s, max_len, m, n, h = 6, 96, 2, 4, 8
  cache = _cache(rng, s, max_len, m, h)
  q_1xLxNxH = jnp.asarray(rng.standard_normal((1, 5, n, h)), jnp.float32)
  target = Part(jnp.zeros((1, 5), jnp.int32), jnp.arange(40, 45, dtype=jnp.int32)[None],
                jnp.zeros((1, 5), jnp.int32), jnp.asarray([3], jnp.int32))
  read = jax.jit(attend.attend_cache_chunked, static_argnames="kv_len")
  solo = np.asarray(read(q_1xLxNxH, cache, target, kv_len=45))[0]
  np.testing.assert_allclose(solo, np.asarray(attend.attend_cache(q_1xLxNxH, cache, target))[0],
                             rtol=1e-5, atol=1e-6)
  for rows, length, kv_len in ((3, 5, 64), (5, 8, 96), (2, 16, None)):
    at = int(rng.integers(rows))
    q = jnp.asarray(rng.standard_normal((rows, length, n, h)), jnp.float32)
    q = q.at[at, :5].set(q_1xLxNxH[0])
    pos = jnp.asarray(rng.integers(0, 40, (rows, 1)) + np.arange(length), jnp.int32)
    pos = pos.at[at].set(jnp.arange(40, 40 + length, dtype=jnp.int32))
    slots = jnp.asarray(rng.permutation(s)[:rows], jnp.int32).at[at].set(3)
    others = Part(jnp.zeros((rows, length), jnp.int32), pos, jnp.zeros((rows, length), jnp.int32),
                  slots)
    out = np.asarray(read(q, cache, others, kv_len=kv_len))
    np.testing.assert_array_equal(out[at, :5], solo, err_msg=f"{rows}x{length}, kv {kv_len}")


def _tiny_model(scope="none"):
  m = serve_default.get_config("size=tiny").model
  m.batch_invariant = True
  m.router.capacity_scope = scope
  return m


@functools.lru_cache(maxsize=None)
def _params():
  """The tiny model's parameters (the capacity scope changes none), one init per process."""
  m = _tiny_model()
  return steps.make_init_fn(m)(0)


def _random_cache(model_cfg, rng, num_slots):
  """A cache full of other requests' (random) keys and values."""
  cache = api.init_cache(model_cfg, num_slots)
  layers = [{w: jnp.asarray(rng.standard_normal(a.shape), a.dtype) for w, a in layer.items()}
            for layer in cache["layers"]]
  return dict(cache, layers=layers)


PROMPT = np.random.default_rng(1).integers(3, 259, 7).tolist()
# (num_slots, slot, decode_rows, prefill_rows, chunk, kv_len, seed): the target alone (one decode
# row and one prefill row), then in busy steps of other shapes, kv lengths, slots and company.
SOLO = (2, 0, 1, 1, 8, 32, 0)
LAYOUTS = ((8, 5, 7, 3, 16, 64, 1), (6, 2, 3, 2, 8, None, 2))
# The --xla_cpu_max_isa reruns (each a new process: jax start-up and every compile again) serve
# the target in the second layout only: tools/mutate.py's I1, I2 and I4 each change the target's
# bits there, and in the recompute, under AVX2 and SSE4_2 as natively (measured 2026-12-05 on a
# 2-core AMD EPYC with AVX-512); the first layout runs here.
if _IN_SUBPROCESS:
  LAYOUTS = LAYOUTS[1:]


def _serve(model_cfg, step, layout):
  """(prompt logits [7, V], next token's logits [V]) of the target (PROMPT, then token 5) served
  in `layout`: its prompt prefilled in one step with other requests' chunks and decode rows, its
  next token decoded in a step of decode rows only, beside other requests."""
  num_slots, slot, decode_rows, prefill_rows, chunk, kv_len, seed = layout
  r = np.random.default_rng(seed)
  cache = _random_cache(model_cfg, r, num_slots)
  free = [int(x) for x in r.permutation(num_slots) if x != slot]
  reach = (kv_len or model_cfg.max_len) - chunk  # other rows stay within what is read

  def decode_rows_with(target_at, used):
    """`decode_rows` rows: other requests in free slots, then idle rows; the target's at
    `target_at` (None: none)."""
    slots = [x for x in free if x not in used][:decode_rows]
    b = np.zeros(decode_rows, np.int32)
    seg = -np.ones(decode_rows, np.int32)
    b[:len(slots)], seg[:len(slots)] = slots, 100 + np.arange(len(slots))
    tok, pos = r.integers(3, 259, decode_rows), r.integers(0, reach, decode_rows)
    if target_at is not None:
      b[target_at], seg[target_at], tok[target_at], pos[target_at] = slot, 0, 5, 7
    return parts.decode_part(tok, b, pos, seg)

  at = int(r.integers(prefill_rows))
  toks, slots = r.integers(3, 259, (prefill_rows, chunk)), np.array(free[:prefill_rows])
  toks[at, :7], slots[at] = PROMPT, slot
  starts, lens = r.integers(0, reach, prefill_rows), r.integers(1, chunk + 1, prefill_rows)
  starts[at], lens[at] = 0, 7
  seg = np.arange(prefill_rows) + 10
  seg[at] = 0
  logits, cache, _ = step(cache, decode_rows_with(None, set(slots)),
                          parts.chunk_part(toks, slots, starts, lens, seg), kv_len)
  prompt_logits = np.asarray(logits["prefill"][at, :7])
  at = int(r.integers(decode_rows))
  logits, _, _ = step(cache, decode_rows_with(at, {slot}), parts.empty_part(0, chunk), kv_len)
  return prompt_logits, np.asarray(logits["decode"][at])


def _stepper(model_cfg):
  step_fn, params = steps.make_step_fn(model_cfg), _params()
  return lambda cache, decode, prefill, kv_len: step_fn(params, cache, StepBatch(decode, prefill),
                                                        kv_len=kv_len)


@pytest.mark.parametrize("scope", ["none", "sequence"])
def test_a_request_gets_its_solo_bits_at_any_step_shape_slot_and_company(scope):
  """Prefill a prompt, then decode its next token, alone and in random steps of other shapes;
  then recompute it (prefill of prompt + token, as after a preemption): the same bits."""
  model_cfg = _tiny_model(scope)
  step = _stepper(model_cfg)
  solo = _serve(model_cfg, step, SOLO)
  assert solo[0].shape == (7, model_cfg.vocab_size)
  # `sequence` in one busy layout (its own compiles; the engine-level check of both scopes is
  # tests/experiments/test_determinism.py).
  for layout in LAYOUTS if scope == "none" else LAYOUTS[-1:]:
    busy = _serve(model_cfg, step, layout)
    np.testing.assert_array_equal(busy[0], solo[0], err_msg=f"prefill, layout {layout}")
    np.testing.assert_array_equal(busy[1], solo[1], err_msg=f"decode, layout {layout}")
  if scope != "none":  # a recompute regroups the request's tokens: other sequence capacities
    return
  # Recompute: prompt and the decoded token prefilled in one chunk give the decode's bits.
  rng = np.random.default_rng(1)
  rng.integers(3, 259, 7)  # PROMPT's draw
  cache = _random_cache(model_cfg, rng, 4)
  chunk = parts.chunk_part([PROMPT + [5] + [0] * 8], [2], [0], [8], [0])
  logits, _, _ = step(cache, parts.empty_part(3, 1), chunk, None)
  np.testing.assert_array_equal(np.asarray(logits["prefill"][0, :7]), solo[0])
  np.testing.assert_array_equal(np.asarray(logits["prefill"][0, 7]), solo[1])


@pytest.mark.skipif(_IN_SUBPROCESS, reason="already in an --xla_cpu_max_isa subprocess")
# One rerun, SSE4_2: narrower than both hosts this project runs on (AVX2, AVX-512), so it always
# differs from native. An AVX2 rerun also passed (2026-12-05) and was dropped to keep the suite
# under 10 minutes (it repeated ~37 s of compiles); I1, I2 and I4 fail under either.
@pytest.mark.parametrize("isa", ["SSE4_2"])
def test_the_same_holds_with_other_vector_instructions(isa):
  """XLA:CPU picks kernels by the vector instructions it may use; rerun this file with fewer."""
  env = dict(os.environ, MOE_SERVE_ISA_RUN="1",
             XLA_FLAGS=f"--xla_cpu_max_isa={isa} --xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "no:xdist", os.path.abspath(__file__), "-k", "not sequence"],
                       cwd=_ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
  assert " passed" in out.stdout and "failed" not in out.stdout


def test_the_sampler_scores_a_row_the_same_at_any_row_count():
  """serving.sampling.sample(invariant=True): a row's token and log-prob, greedy or seeded, do not
  depend on how many decode and prefill rows the step has (R = B + P) or where the row sits."""
  from moe_serve.serving.loop import sampling  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  row_V = (rng.standard_normal(260) * 3).astype(np.float32)
  seen = {}
  for b, p in ((1, 0), (8, 2), (16, 2), (24, 0), (6, 3), (40, 4)):
    dec_BxV = rng.standard_normal((b, 260)).astype(np.float32)
    at = int(rng.integers(b))
    dec_BxV[at] = row_V
    batch = sampling.SamplingBatch.padding(b, p)
    for temperature in (0.0, 0.9):
      batch.seeds_R[at], batch.positions_R[at], batch.temperature_R[at] = 7, 11, temperature
      if b + p > 1:  # a neighbour of the other kind: a mixed tile
        batch.temperature_R[(at + 1) % (b + p)] = 0.5 if temperature == 0 else 0.0
      tok, lp = sampling.sample(dec_BxV, rng.standard_normal((p, 4, 260)).astype(np.float32),
                                batch, True)
      seen.setdefault(temperature, set()).add((int(tok[at]), float(lp[at])))
  assert all(len(v) == 1 for v in seen.values()), seen
