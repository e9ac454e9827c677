"""Quantisers for the HF fixtures (scripts/make_hf_fixtures.py; needs torch): FP8 block-scaled
weights as DeepSeek-V3 and Kimi K2 ship them, and MXFP4 experts as gpt-oss ships them. Also the
numpy dequantisers the script's independent numpy forward pass reads the files with.

FP8: each 128x128 block of a Linear weight [out, in] is stored as float8_e4m3fn values q and one
float32 `weight_scale_inv` s[out_block, in_block]; the weight is q * s. Blocks at the edges may be
partial (DeepSeek's `weight_dequant` indexes the scale by row // 128, col // 128). The fixture's
scales are powers of two (the UE8M0 scales DeepSeek-V3.1 uses), so q * s is exact in bfloat16 and
transformers' float32 dequantisation gives the same numbers as a bf16 one.

MXFP4: each row of 32 values along the input dimension shares an E8M0 scale byte e (the scale is
2**(e - 127)); the values are FP4 (E2M1) codes, two per byte, low nibble first. Stored as
`<name>_blocks` uint8 [E, out, in / 32, 16] and `<name>_scales` uint8 [E, out, in / 32], where
transformers' parameter is [E, in, out] (transformers.integrations.mxfp4).
"""
import numpy as np
import torch

FP8_BLOCK = 128
FP8_MAX = 448.0
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def fp8_quantize(w):
  """torch float [out, in] -> (float8_e4m3fn [out, in], float32 scale_inv [ceil(out/128),
  ceil(in/128)]) with power-of-two block scales."""
  w = w.float()
  rows, cols = w.shape
  nr, nc = -(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK)
  scale = torch.empty(nr, nc)
  q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
  for i in range(nr):
    for j in range(nc):
      blk = w[i * FP8_BLOCK:(i + 1) * FP8_BLOCK, j * FP8_BLOCK:(j + 1) * FP8_BLOCK]
      amax = float(blk.abs().max().clamp_min(1e-12))
      s = 2.0 ** np.ceil(np.log2(amax / FP8_MAX))
      scale[i, j] = s
      q[i * FP8_BLOCK:(i + 1) * FP8_BLOCK, j * FP8_BLOCK:(j + 1) * FP8_BLOCK] = (
          (blk / s).to(torch.float8_e4m3fn))
  return q, scale


def fp8_dequantize_torch(q, scale):
  """q * scale_inv block by block (float32)."""
  s = scale.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)
  return q.float() * s[:q.shape[0], :q.shape[1]]


def fp8_dequantize_numpy(q_u8, scale):
  """The numpy check's own FP8 dequantisation from the raw bytes (uint8 view of e4m3fn)."""
  sign = np.where(q_u8 & 0x80, -1.0, 1.0)
  exp = (q_u8 >> 3) & 0x0F
  man = (q_u8 & 0x07).astype(np.float64)
  val = np.where(exp == 0, man / 8 * 2.0 ** -6, (1 + man / 8) * 2.0 ** (exp.astype(np.float64) - 7))
  s = np.repeat(np.repeat(scale, FP8_BLOCK, 0), FP8_BLOCK, 1)[:q_u8.shape[0], :q_u8.shape[1]]
  return (sign * val * s).astype(np.float32)


def mxfp4_quantize(w):
  """torch float [E, in, out] (transformers' layout) -> (blocks uint8 [E, out, in/32, 16],
  scales uint8 [E, out, in/32])."""
  w = w.float().transpose(1, 2).contiguous().numpy()  # [E, out, in]
  e, out, din = w.shape
  g = w.reshape(e, out, din // 32, 32)
  amax = np.abs(g).max(-1)
  exp = np.floor(np.log2(np.maximum(amax, 1e-30))) - 2  # 6 = 1.5 * 2**2 is FP4's largest
  exp = np.clip(exp, -127, 127)
  scaled = g / (2.0 ** exp)[..., None]
  codes = np.abs(scaled[..., None] - FP4_VALUES).argmin(-1).astype(np.uint8)  # nearest code
  blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
  return torch.from_numpy(blocks), torch.from_numpy((exp + 127).astype(np.uint8))


def mxfp4_dequantize_numpy(blocks, scales):
  """blocks [E, out, G, 16], scales [E, out, G] -> float32 [E, in, out]."""
  lo, hi = FP4_VALUES[blocks & 0x0F], FP4_VALUES[blocks >> 4]
  vals = np.stack([lo, hi], -1).reshape(*blocks.shape[:-1], 32)
  vals = vals * (2.0 ** (scales.astype(np.float32) - 127))[..., None]
  e, out, groups = scales.shape
  return np.ascontiguousarray(vals.reshape(e, out, groups * 32).transpose(0, 2, 1))
