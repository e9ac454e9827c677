"""The routed experts' FFN, once for every dispatch backend: weights, optional biases, activation.

    gate = x W_gate (+ b_gate),  up = x W_up (+ b_up)
    h    = silu(gate) * up                                         (`model.expert_act="silu"`)
         | (clip(up, -l, l) + 1) * g * sigmoid(alpha * g),  g = min(gate, l)          ("clamped",
           gpt-oss; l = model.swiglu_limit, alpha = model.swiglu_alpha)
    y    = h W_down (+ b_down)

The biases (`model.expert_bias`, gpt-oss) belong to the expert: b_down is added to the expert's
output row before the routing weight multiplies it, as in HF's GptOssExperts
(`(h W_down + b_down) * weight`), so a kept pair contributes weight * (h W_down + b_down). A buffer
row that holds no kept pair (an empty row, a padding row of a dispatch block) does produce bias
outputs, but every backend's combine reads it with weight zero (or not at all), so dropped pairs
and padding still contribute exactly zero.

Each backend lays its rows out differently ([E, C, D] buffers, [T, E, D] for the dense reference,
ragged rows sorted by expert, one expert's dispatch blocks, [E, G, C, D] per dispatch group), so
`ffn` takes the two contractions and the way a bias broadcasts to the rows; the arithmetic after
the matmuls is this one function's.

Axis letters (docs/design.md section 2): E experts, D model, F expert FFN hidden.
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExpertWeights:
  """The E experts' weights (float32 parameters, cast to the compute dtype on use), their
  optional biases (None: no bias) and the activation (static: not an array)."""
  w_gate_ExDxF: Any
  w_up_ExDxF: Any
  w_down_ExFxD: Any
  b_gate_ExF: Optional[Any] = None
  b_up_ExF: Optional[Any] = None
  b_down_ExD: Optional[Any] = None
  act: str = dataclasses.field(default="silu", metadata=dict(static=True))
  limit: float = dataclasses.field(default=7.0, metadata=dict(static=True))
  alpha: float = dataclasses.field(default=1.702, metadata=dict(static=True))

  @property
  def num_experts(self):
    """E (the leading axis of every array)."""
    return self.w_gate_ExDxF.shape[0]


def from_model(m, w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD, biases=(None, None, None)):
  """ExpertWeights with the activation of the `model` section `m` (expert_act, swiglu_limit,
  swiglu_alpha); `biases`: (b_gate, b_up, b_down) or Nones."""
  return ExpertWeights(w_gate_ExDxF, w_up_ExDxF, w_down_ExFxD, *biases, act=m.expert_act,
                       limit=float(m.swiglu_limit), alpha=float(m.swiglu_alpha))


def cast(w, dt):
  """Every array of `w` (weights and biases) in dtype `dt`."""
  return jax.tree.map(lambda a: a.astype(dt), w)


def activate(w, gate, up):
  """The gated activation of `w.act` on the gate and up projections (any matching shapes)."""
  if w.act == "silu":
    return nn.silu(gate) * up
  if w.act == "clamped":
    gate = jnp.minimum(gate, w.limit)
    up = jnp.clip(up, -w.limit, w.limit)
    return (up + 1) * (gate * jax.nn.sigmoid(gate * w.alpha))
  raise ValueError(f"model.expert_act={w.act!r} is not one of silu, clamped")


def ffn(w, x, matmul_in, matmul_out=None, bias=lambda b: b):
  """The experts' FFN on rows `x` laid out as the caller's backend lays them.

  `matmul_in(x, W)` contracts x with w_gate / w_up (giving the hidden rows), `matmul_out(h, W)`
  the hidden rows with w_down (default: matmul_in); `bias(b)` broadcasts a bias (b_gate, b_up:
  [..., F]; b_down: [..., D] as stored in `w`) to the rows it is added to. `w` must already be
  in the compute dtype (`cast`).
  """
  matmul_out = matmul_out or matmul_in
  gate = matmul_in(x, w.w_gate_ExDxF)
  up = matmul_in(x, w.w_up_ExDxF)
  if w.b_gate_ExF is not None:
    gate = gate + bias(w.b_gate_ExF)
  if w.b_up_ExF is not None:
    up = up + bias(w.b_up_ExF)
  y = matmul_out(activate(w, gate, up), w.w_down_ExFxD)
  if w.b_down_ExD is not None:
    y = y + bias(w.b_down_ExD)
  return y
