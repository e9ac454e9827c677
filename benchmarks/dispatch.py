r"""Times one MoE layer per dispatch backend against a dense SwiGLU FFN of equal active FLOPs.

  python benchmarks/dispatch.py                         # T in {64, 512, 4096}, E in {8, 64}
  python benchmarks/dispatch.py --tokens=4096 --experts=8 --repeats=20
  python benchmarks/dispatch.py --append_to=benchmarks/RESULTS.md

The MoE layer is the whole jitted path: router matmul, `routing.route`, dispatch and experts.
Dropping backends (`einsum`, `gather`) use top-k `batch` scope with capacity factor 1.25 and
`token` priority; `ragged` is dropless (`none`). The dense FFN has hidden size k * d_ff_expert, so
it does the same matmul FLOPs as the k experts each token activates. Each figure is the median
of `--repeats` rounds after 2 warm-up calls; a round calls every case once (interleaved), and
the ratio column is the median over rounds of (best dropping backend / dense) in the same round.
"""
import statistics

from absl import app, flags
import jax
import jax.numpy as jnp
import ml_collections

from moe_serve.model import dispatch, experts, routing

import common  # benchmarks/common.py (the script's folder is on sys.path)

_TOKENS = flags.DEFINE_list("tokens", ["64", "512", "4096"], "flat token counts T")
_EXPERTS = flags.DEFINE_list("experts", ["8", "64"], "expert counts E")
_D_MODEL = flags.DEFINE_integer("d_model", 256, "model width D")
_D_FF = flags.DEFINE_integer("d_ff_expert", 512, "expert hidden width F")
_K = flags.DEFINE_integer("k", 2, "experts per token")
_FACTOR = flags.DEFINE_float("capacity_factor", 1.25, "capacity factor of the dropping backends")
_REPEATS = flags.DEFINE_integer("repeats", 10, "timed calls per case (median reported)")
_APPEND = flags.DEFINE_string("append_to", None, "append the markdown table to this file")

CASES = (("dense", None, None), ("einsum", "einsum", "batch"), ("gather", "gather", "batch"),
         ("ragged (dropless)", "ragged", "none"))


def _router_cfg(backend, scope):
  return ml_collections.ConfigDict(dict(
      kind="topk", k=_K.value, renormalize=True, capacity_scope=scope,
      capacity_factor_prefill=_FACTOR.value, capacity_factor_decode=_FACTOR.value,
      group_size=64, min_capacity=1, priority="token", dispatch=backend, jitter=0.0))


def moe_layer(r, num_experts, num_tokens):
  """jit((x [T, D], w_router [D, E], ExpertWeights) -> [T, D]): route + dispatch, no Flax."""
  capacity = routing.buffer_capacity(r, num_experts, num_tokens)

  def f(x_TxD, w_router_DxE, w):
    seg_T = jnp.zeros((num_tokens,), jnp.int32)
    rt = routing.route(x_TxD @ w_router_DxE, seg_T, r)
    return dispatch.run(r.dispatch, x_TxD, rt, w, capacity)
  return jax.jit(f)


def dense_ffn(x_TxD, w_gate_DxF, w_up_DxF, w_down_FxD):
  return (jax.nn.silu(x_TxD @ w_gate_DxF) * (x_TxD @ w_up_DxF)) @ w_down_FxD


def run_case(num_tokens, num_experts, repeats):
  """{case name: [ms per call]} for one (T, E)."""
  d, f, k = _D_MODEL.value, _D_FF.value, _K.value
  keys = jax.random.split(jax.random.key(0), 8)
  x = jax.random.normal(keys[0], (num_tokens, d))
  w_router = jax.random.normal(keys[1], (d, num_experts)) * d**-0.5
  w = experts.ExpertWeights(jax.random.normal(keys[2], (num_experts, d, f)) * d**-0.5,
                             jax.random.normal(keys[3], (num_experts, d, f)) * d**-0.5,
                             jax.random.normal(keys[4], (num_experts, f, d)) * f**-0.5)
  dense_w = (jax.random.normal(keys[5], (d, k * f)) * d**-0.5,
             jax.random.normal(keys[6], (d, k * f)) * d**-0.5,
             jax.random.normal(keys[7], (k * f, d)) * (k * f)**-0.5)
  fns = {}
  for name, backend, scope in CASES:
    if backend is None:
      fns[name] = (jax.jit(dense_ffn), (x, *dense_w))
    else:
      fns[name] = (moe_layer(_router_cfg(backend, scope), num_experts, num_tokens),
                   (x, w_router, w))
  return common.interleaved_ms(fns, repeats)


def main(argv):
  del argv
  header = ["T", "E"] + [n for n, _, _ in CASES] + ["best dropping / dense"]
  rows = []
  for t in map(int, _TOKENS.value):
    for e in map(int, _EXPERTS.value):
      times = run_case(t, e, _REPEATS.value)
      ms = {n: statistics.median(v) for n, v in times.items()}
      best = min(("einsum", "gather"), key=ms.get)
      # Ratio per round (same moment, same load), then the median over rounds.
      ratio = statistics.median(b / d for b, d in zip(times[best], times["dense"]))
      rows.append([str(t), str(e)] + [f"{ms[n]:.2f}" for n, _, _ in CASES] +
                  [f"{ratio:.2f}x ({best})"])
      print(" | ".join(rows[-1]), flush=True)
  common.report("MoE dispatch backends",
                f"D={_D_MODEL.value}, F={_D_FF.value}, k={_K.value}, capacity factor "
                f"{_FACTOR.value} (batch scope, token priority), float32; median of "
                f"{_REPEATS.value} interleaved rounds, ms per layer call.",
                header, rows, _APPEND.value)


if __name__ == "__main__":
  app.run(main)
