"""Drops attributed to requests, from a step's routing records and the step's segment ids.

A routing record per MoE layer holds `kept` [T, K] (bool) over the step's flat token set: the B
decode tokens, then the P * L prefill tokens, the order the model concatenates them in. A
(token, choice) pair that is not kept is a drop; padding tokens (segment id < 0) never count.

Axis letters (docs/design.md section 2): T flat tokens, K choices per token, B decode rows,
P prefill rows, L tokens per prefill row (the chunk length).
"""
import numpy as np


def drops_per_layer(kept_list, seg_T):
  """[num_moe_layers] dropped (token, choice) pairs of real tokens in the step."""
  valid_T = np.asarray(seg_T) >= 0
  return np.array([int((~np.asarray(k, bool))[valid_T].sum()) for k in kept_list], np.int64)


def drops_by_request(kept_list, seg_T):
  """{request id: [drops per MoE layer]} for every request with a real token in the step."""
  seg_T = np.asarray(seg_T)
  valid_T = seg_T >= 0
  ids, inv = np.unique(seg_T[valid_T], return_inverse=True)
  per_layer = [np.bincount(inv, weights=(~np.asarray(k, bool))[valid_T].sum(1),
                           minlength=len(ids)) for k in kept_list]
  return {int(rid): [int(layer[i]) for layer in per_layer] for i, rid in enumerate(ids)}
