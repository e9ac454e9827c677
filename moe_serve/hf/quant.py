"""Dequantising HF checkpoints on load, one tensor at a time, to the parameters' dtype.

- FP8 block-scaled weights (DeepSeek-V3, Kimi K2: quantization_config quant_method "fp8"): a
  Linear weight [out, in] stored as float8_e4m3fn q with a `<name>_scale_inv` s of
  [ceil(out / bo), ceil(in / bi)] (weight_block_size [bo, bi], 128x128) holds q * s, block by
  block; edge blocks may be partial (DeepSeek's weight_dequant indexes s by row // bo,
  col // bi). s is float32 (or bf16), or E8M0 bytes 2**(s - 127) (scale_fmt "ue8m0").
- MXFP4 experts (gpt-oss: quant_method "mxfp4"): `<name>_blocks` uint8 [E, out, G, 16] holds two
  E2M1 codes per byte (low nibble first) and `<name>_scales` uint8 [E, out, G] one E8M0 exponent
  per 32 values; the tensor is [E, in = 32 G, out] (transformers' layout, as
  transformers.integrations.mxfp4.convert_moe_packed_tensors gives it).
safetensors' numpy reader has no float8 type, so FP8 tensors are read from the file's bytes
(`read_raw`) and viewed as ml_dtypes.float8_e4m3fn.
"""
import json
import struct

import ml_dtypes
import numpy as np

FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
_RAW_DTYPES = {"F8_E4M3": ml_dtypes.float8_e4m3fn, "U8": np.uint8, "F32": np.float32,
               "BF16": ml_dtypes.bfloat16, "F16": np.float16}
QUANTISED_DTYPES = ("F8_E4M3", "U8")
SCALE_SUFFIXES = ("_scale_inv", "_scales", "_blocks")


def read_raw(path, name):
  """One tensor of a safetensors file, parsed from its header and read from its bytes (for
  dtypes safetensors' numpy reader lacks). ValueError if the file or entry is malformed."""
  with open(path, "rb") as f:
    (size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(size))
    entry = header[name]
    dtype = np.dtype(_RAW_DTYPES[entry["dtype"]])
    start, end = entry["data_offsets"]
    count = int(np.prod(entry["shape"], dtype=np.int64))
    if end - start != count * dtype.itemsize:
      raise ValueError(f"{name}: data_offsets {start}..{end} do not hold {entry['shape']} "
                       f"{entry['dtype']}")
    f.seek(8 + size + start)
    data = np.fromfile(f, dtype=dtype, count=count)
  if data.size != count:
    raise ValueError(f"{name}: the file ends before its {count} values")
  return data.reshape(entry["shape"])


def _scales(s):
  if s.dtype == np.uint8:  # E8M0 exponents
    return np.exp2(s.astype(np.float32) - 127.0)
  return s.astype(np.float32)


def fp8_dequantize(q, scale_inv, block, dtype):
  """q [out, in] (float8_e4m3fn) times its block scales [ceil(out/bo), ceil(in/bi)] -> `dtype`,
  128 rows of float32 at a time."""
  rows, cols = q.shape
  bo, bi = block
  s = _scales(scale_inv)
  want = (-(-rows // bo), -(-cols // bi))
  if s.shape != want:
    raise ValueError(f"weight_scale_inv has shape {s.shape}, a {rows}x{cols} weight in "
                     f"{bo}x{bi} blocks needs {want}")
  out = np.empty((rows, cols), dtype)
  s_cols = np.repeat(s, bi, axis=1)[:, :cols]  # [out blocks, in]
  for r in range(0, rows, bo):
    out[r:r + bo] = q[r:r + bo].astype(np.float32) * s_cols[r // bo]
  return out


def mxfp4_dequantize(blocks, scales, dtype):
  """MXFP4 experts (blocks [experts, out, groups, 16], scales [experts, out, groups]) ->
  [experts, in = 32 groups, out] in `dtype`, one expert at a time."""
  e, rows, groups, width = blocks.shape
  if width != 16 or scales.shape != (e, rows, groups):
    raise ValueError(f"MXFP4 blocks {blocks.shape} and scales {scales.shape} must be "
                     "[experts, out, groups, 16] and [experts, out, groups]")
  out = np.empty((e, groups * 32, rows), dtype)
  for i in range(e):
    b = blocks[i]
    vals = np.stack([FP4_VALUES[b & 0x0F], FP4_VALUES[b >> 4]], -1).reshape(rows, groups, 32)
    vals *= _scales(scales[i])[..., None]
    out[i] = vals.reshape(rows, groups * 32).T
  return out
