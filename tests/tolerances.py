"""Numerical tolerances of the tests: one place, each with the reason it has its value.

float32 unless the name says otherwise. Tiny-model logits are O(1) to O(10); dispatch outputs are
O(1) (inputs N(0, 1), weights N(0, 1/fan_in)). A real bug (a wrong token, slot, weight, mask or
position) moves values by O(0.1) or more, far above every bound here. Properties that a contract
states as bitwise (docs/design.md contract 2, one-device meshes) use assert_array_equal, never
these.
"""

# Dispatch backends (model/dispatch*.py) against each other and a dense numpy reference: they add
# the same products in different orders (one-hot einsums over [T, E, C], gathers, ragged
# matmuls), so exact equality is not expected.
DISPATCH_ATOL, DISPATCH_RTOL = 2e-6, 1e-5

# Decoder logits from two float32 paths over the same tokens: cached decode vs a full forward (the
# cached path attends over the whole slot row, max_len keys masked, so softmax sums reduce in
# another order), chunked vs one-shot prefill, and one MoE backend vs another inside the model.
LOGITS_ATOL = 1e-5

# Sharded vs one device (contract 5): contractions split over `tensor` or `expert` are summed by
# an all-reduce in another order, and each device multiplies a slice of the rows (XLA:CPU float32
# results for a row depend on the row count). Measured at most 6.0e-6 on every mesh
# (benchmarks/sharded_agreement.py, docs/sharding.md); 5e-5 leaves room for other routings and
# XLA versions.
SHARDED_LOGITS_ATOL = 5e-5

# Log-probabilities of given tokens, chunked prefill through the engine step vs one full forward:
# different matmul shapes, float32 rounding only, then log_softmax over the vocabulary.
LOGPROB_ATOL = 1e-4

# bfloat16 compute (model.dtype=bfloat16; parameters stay float32) against float32, same params:
# bf16 keeps 8 mantissa bits (relative rounding 2^-8 = 0.4% per cast) and the tiny model chains
# ~20 casts, so logits move by a few percent of their scale. Measured max |delta logit| / max
# |logit| of 0.026-0.056 over 5 seeds (tiny config, dropless); the bound is about twice that. A
# missing block or a wrong cast moves logits by O(1), well above it.
BF16_VS_F32_REL = 0.1  # of max |float32 logit|

# Cached decode vs full forward, both in bfloat16: attention runs in float32 in both, so the paths
# differ only by float32 reduction order; that can move an activation across one bf16 rounding
# boundary (one bf16 ulp, 2^-8 relative). Two bf16 ulps of a logit in [4, 8) (measured 0 here).
BF16_CACHE_ATOL = 2**-4
