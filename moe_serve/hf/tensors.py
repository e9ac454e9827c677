"""Which HF tensors make each moe_serve parameter, and how (hf/weights.py reads and assembles).

`tensor_map(model_cfg, family, has)` lists (param path, [HF tensor names], how) for every
parameter; `has(name)` says whether the checkpoint holds a tensor (DeepSeek experts come per
expert, as DeepSeek and transformers' save_pretrained write them, or fused as transformers
holds them in memory). The hows:
  copy      the tensor as it is (norm scales, embeddings, biases of the same shape)
  T         transpose a Linear weight [out, in] -> [in, out]
  T_heads   q/k/v [N*H, D] -> [D, N, H]; o [D, N*H] -> [N, H, D]
  heads     a bias [N*H] -> [N, H]
  row       a [1, D] Linear -> [D]
  stack_T   per-expert Linear weights, transposed and stacked -> [E, ...]
  *_rope    the same, then the last Hr columns of each head (q) or of the row (kv_a)
            de-interleaved: DeepSeek rotates pairs (2i, 2i+1), moe_serve the halves (i, i+Hr/2)
  kv_b_k / kv_b_v   kv_b_proj [N*(Hn+Hv), Hc] -> [Hc, N, Hn+Hv], its key or value part
  fused_gate / fused_up / fused_T   transformers' fused experts: gate_up_proj [E, 2F, D]
            (gate rows first) and down_proj [E, D, F]
  even / odd   gpt-oss's gate_up_proj [E, D, 2F] (and bias [E, 2F]): gate = even columns,
            up = odd ones
"""
from moe_serve.model.transformer import is_moe_layer


def _mlp_names(family):
  if family == "mixtral":
    return "block_sparse_moe", ("w1", "w3", "w2")
  return "mlp", ("gate_proj", "up_proj", "down_proj")


_GATE_UP_DOWN = (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj"))


def _mla(m, me, att):
  out = []
  if m.q_lora_rank:
    out += [((me, "attn", "wq_a"), [f"{att}.q_a_proj.weight"], "T"),
            ((me, "attn", "q_norm", "scale"), [f"{att}.q_a_layernorm.weight"], "copy"),
            ((me, "attn", "wq_b"), [f"{att}.q_b_proj.weight"], "T_heads_rope")]
  else:
    out.append(((me, "attn", "wq"), [f"{att}.q_proj.weight"], "T_heads_rope"))
  kv_b = [f"{att}.kv_b_proj.weight"]
  return out + [((me, "attn", "wkv_a"), [f"{att}.kv_a_proj_with_mqa.weight"], "T_rope"),
                ((me, "attn", "kv_norm", "scale"), [f"{att}.kv_a_layernorm.weight"], "copy"),
                ((me, "attn", "wk_b"), kv_b, "kv_b_k"), ((me, "attn", "wv_b"), kv_b, "kv_b_v"),
                ((me, "attn", "wo"), [f"{att}.o_proj.weight"], "T_heads")]


def _gqa(m, me, att):
  out = [((me, "attn", f"w{x}"), [f"{att}.{x}_proj.weight"], "T_heads") for x in "qkvo"]
  if m.attn_bias:
    out += [((me, "attn", f"b{x}"), [f"{att}.{x}_proj.bias"], "heads") for x in "qkv"]
  if m.attn_out_bias:
    out.append(((me, "attn", "bo"), [f"{att}.o_proj.bias"], "copy"))
  if m.attn_sinks:
    out.append(((me, "attn", "sinks"), [f"{att}.sinks"], "copy"))
  if m.qk_norm != "none":
    out += [((me, "attn", f"{x}_norm", "scale"), [f"{att}.{x}_norm.weight"], "copy")
            for x in "qk"]
  return out


def _experts(m, me, moe, family, has):
  """The routed experts' weights (and gpt-oss's biases)."""
  ex, ours = f"{moe}.experts", (me, "moe", "experts")
  if family == "gpt_oss":
    return [(ours + ("w_gate",), [f"{ex}.gate_up_proj"], "even"),
            (ours + ("w_up",), [f"{ex}.gate_up_proj"], "odd"),
            (ours + ("w_down",), [f"{ex}.down_proj"], "copy"),
            (ours + ("b_gate",), [f"{ex}.gate_up_proj_bias"], "even"),
            (ours + ("b_up",), [f"{ex}.gate_up_proj_bias"], "odd"),
            (ours + ("b_down",), [f"{ex}.down_proj_bias"], "copy")]
  if has(f"{ex}.gate_up_proj"):  # fused, as transformers 5 holds them
    return [(ours + ("w_gate",), [f"{ex}.gate_up_proj"], "fused_gate"),
            (ours + ("w_up",), [f"{ex}.gate_up_proj"], "fused_up"),
            (ours + ("w_down",), [f"{ex}.down_proj"], "fused_T")]
  _, names = _mlp_names(family)
  return [(ours + (o,), [f"{ex}.{e}.{t}.weight" for e in range(m.num_experts)], "stack_T")
          for o, t in zip(("w_gate", "w_up", "w_down"), names)]


def tensor_map(m, family, has=lambda name: False):
  """[(param path, [HF tensor names], how)] for every moe_serve parameter of model section `m`."""
  out = [(("embedding",), ["model.embed_tokens.weight"], "copy"),
         (("final_norm", "scale"), ["model.norm.weight"], "copy")]
  if not m.tie_embeddings:
    out.append((("unembed",), ["lm_head.weight"], "T"))
  moe_prefix, (gate, up, down) = _mlp_names(family)
  for i in range(m.num_layers):
    hf, me = f"model.layers.{i}", f"block_{i}"
    att = f"{hf}.self_attn"
    out += [((me, "norm_attn", "scale"), [f"{hf}.input_layernorm.weight"], "copy"),
            ((me, "norm_ffn", "scale"), [f"{hf}.post_attention_layernorm.weight"], "copy")]
    out += _mla(m, me, att) if m.attention == "mla" else _gqa(m, me, att)
    if not is_moe_layer(m, i):
      out += [((me, "mlp", ours), [f"{hf}.mlp.{theirs}.weight"], "T")
              for ours, theirs in (("w_gate", gate), ("w_up", up), ("w_down", down))]
      continue
    moe = f"{hf}.{moe_prefix}"
    router = "router" if family == "gpt_oss" else "gate"
    out.append(((me, "moe", "w_router"), [f"{moe}.{router}.weight"], "T"))
    if m.router.bias:
      out.append(((me, "moe", "b_router"), [f"{moe}.router.bias"], "copy"))
    if m.router.selection_bias:
      out.append(((me, "moe", "e_score_bias"), [f"{moe}.gate.e_score_correction_bias"], "copy"))
    out += _experts(m, me, moe, family, has)
    shared = "shared_experts" if m.attention == "mla" else "shared_expert"
    if m.shared_expert:
      out += [((me, "moe", "shared_expert", ours), [f"{moe}.{shared}.{theirs}.weight"], "T")
              for ours, theirs in _GATE_UP_DOWN]
    if m.shared_expert_gate:
      out.append(((me, "moe", "w_shared_gate"), [f"{moe}.shared_expert_gate.weight"], "row"))
  return out
