"""Build the tiny random Hugging Face MoE fixtures in tests/fixtures/hf/ (issue 12).

NOT run by the tests: the tests read the committed outputs with numpy/safetensors only. This script needs
the optional fixture ("peer") dependencies torch, transformers, tokenizers and safetensors, which moe_serve
itself does not install. It was run with torch 2.13 (CPU), transformers 5.24, tokenizers 0.23.3,
safetensors 0.8.0 (the versions are recorded in each reference.json):

    python -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers tokenizers safetensors
    /tmp/hf/bin/python scripts/make_hf_fixtures.py            # rewrites tests/fixtures/hf/

Nothing is downloaded: the byte-level BPE tokenizer is trained here on TEXT below and every model is
random. Per family (mixtral, qwen2_moe, qwen3_moe, olmoe) it writes tests/fixtures/hf/<family>/ with

  config.json, generation_config.json      what save_pretrained writes (transformers 5 format)
  model.safetensors                        bf16 weights (mixtral: two shards + model.safetensors.index.json)
  tokenizer.json, tokenizer_config.json,   the shared tokenizer (its post-processor prepends <|bos|>)
  special_tokens_map.json (if written)
  reference.json                           prompts, token ids, greedy completions, seed, margins, versions
  reference_logits.npz                     float32 logits [T, vocab] of every prompt position, key "p<i>"

The reference is computed from the model loaded back FROM THE SAVED FILES in float32 (bf16 weights upcast)
with eager attention. Seeds are tried in order until, on every prompt + its greedy completion, every MoE
layer's router has a gap > ROUTER_GAP_MIN between its k-th and (k+1)-th softmax probability and every
greedy token wins by a logit margin > MARGIN_MIN. Last, an independent float32 numpy forward pass from the
saved tensors (numpy_forward below, which spells out each family's semantics) must give HF's logits within
1e-4 and HF's greedy tokens.

Newer families (issue 27): deepseek_v3 (FP8 block-scaled weights), deepseek_v2, gpt_oss (MXFP4 experts);
their numpy forward is scripts/hf_fixture_numpy.py, their quantisers scripts/hf_fixture_quant.py. Quantised
fixtures are written as the real checkpoints ship and the reference is transformers' own dequantisation of
those files (reference.json "quantization"). Their router gaps: DeepSeek's group choice and its biased
selection inside the chosen groups (see _deepseek_gap); gpt-oss's top-k of the router's softmax.

Usage: make_hf_fixtures.py [FAMILY ...]   (default: all seven)
"""

import datetime
import json
import os
import re
import shutil
import sys

import hf_fixture_numpy  # scripts/: the newer families' numpy forward
import hf_fixture_quant  # scripts/: FP8 and MXFP4 quantisers
import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")
TOKENIZER_VOCAB = 320
SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]  # ids 0, 1, 2
NEW_TOKENS = 16
ROUTER_GAP_MIN = 1e-3
MARGIN_MIN = 1e-3
PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Experts route each token to two of four",
    "for i in range(10):\n    print(i)",
]

TEXT = """\
The quick brown fox jumps over the lazy dog. A mixture of experts sends each token to a few experts.
The router scores every expert and keeps the top two; the others are skipped for that token.
Serving a model means answering many requests at once, and a batch shares the same experts.
When an expert receives more tokens than its capacity allows, some tokens are dropped or delayed.
Researchers ask whether greedy answers change under load, and what a capacity limit costs.
The cache holds keys and values of earlier positions so that decoding one token is cheap.
Attention compares the query of a position with the keys of all earlier positions.
Rotary position embeddings turn each pair of features by an angle that grows with the position.
A small model trained on a small text will not say anything wise, but it is quick to test.
Tokens are pieces of words; a byte-level tokenizer can spell any string from its bytes.
Each layer normalises its input, attends, adds, normalises again and sends tokens to experts.
The weights are stored in bfloat16, which keeps eight bits of exponent and seven of mantissa.
Please read the file, count the words, and write the answer on one line.
She opened the window because the room was warm, and the wind carried the smell of rain.
Numbers such as 3, 14, 159 and 2653 appear in tables, logs and the output of programs.

def add(a, b):
    return a + b


def mean(values):
    total = 0
    for value in values:
        total += value
    return total / len(values)


class Router:
    def __init__(self, num_experts, top_k=2):
        self.num_experts = num_experts
        self.top_k = top_k

    def route(self, scores):
        order = sorted(range(self.num_experts), key=lambda e: -scores[e])
        return order[: self.top_k]


for i in range(10):
    print(i, i * i)

with open("data.txt") as f:
    lines = [line.strip() for line in f if line.strip()]
print(len(lines), "lines")

import numpy as np
x = np.zeros((4, 8), dtype=np.float32)
y = x.sum(axis=-1)
if y.max() > 0:
    raise ValueError("expected zeros")
"""

# Per family: its real features, distinct non-default rope theta and norm eps, one tied family (olmoe).
COMMON = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,
    hidden_act="silu",
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
    num_experts_per_tok=2,
)
FAMILIES = {
    "mixtral": dict(
        cls="MixtralConfig",
        vocab_size=TOKENIZER_VOCAB,
        intermediate_size=48,
        num_local_experts=4,
        rope_theta=2000.0,
        rms_norm_eps=1e-3,
        tie_word_embeddings=False,
        sliding_window=None,
    ),
    "qwen2_moe": dict(
        cls="Qwen2MoeConfig",
        vocab_size=384,  # padded beyond the tokenizer's 320, as real Qwen checkpoints are
        intermediate_size=64,  # unused: mlp_only_layers is empty and decoder_sparse_step is 1
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=4,
        norm_topk_prob=False,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        qkv_bias=True,
        rope_theta=5000.0,
        rms_norm_eps=2e-3,
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=None,
    ),
    "qwen3_moe": dict(
        cls="Qwen3MoeConfig",
        vocab_size=TOKENIZER_VOCAB,
        head_dim=16,  # explicit, != hidden / heads = 8
        intermediate_size=64,  # unused
        moe_intermediate_size=32,
        num_experts=4,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        attention_bias=False,
        rope_theta=20000.0,
        rms_norm_eps=5e-4,
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=None,
    ),
    "olmoe": dict(
        cls="OlmoeConfig",
        vocab_size=TOKENIZER_VOCAB,
        intermediate_size=32,
        num_experts=4,
        norm_topk_prob=False,
        clip_qkv=None,
        attention_bias=False,
        rope_theta=1000.0,
        rms_norm_eps=4e-3,
        tie_word_embeddings=True,
    ),
    # DeepSeek-V3: MLA with a query LoRA, YaRN with mscale_all_dim (the softmax scale too), one dense first
    # layer (two 128-wide FP8 blocks), shared experts, sigmoid router with a selection bias and 2 of 4
    # groups, FP8 block-scaled weights. num_key_value_heads = heads, as MLA in transformers needs.
    "deepseek_v3": dict(
        cls="DeepseekV3Config",
        vocab_size=TOKENIZER_VOCAB,
        num_key_value_heads=4,
        intermediate_size=256,
        moe_intermediate_size=32,
        n_routed_experts=8,
        n_group=4,
        topk_group=2,
        num_experts_per_tok=2,
        n_shared_experts=2,
        first_k_dense_replace=1,
        q_lora_rank=24,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=12,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        rope_interleave=True,
        rms_norm_eps=1e-6,  # = the latent norms' fixed eps, as in every DeepSeek checkpoint
        tie_word_embeddings=False,
        rope=dict(rope_type="yarn", rope_theta=3000.0, factor=4.0, original_max_position_embeddings=64,
                  mscale=1.0, mscale_all_dim=0.8, beta_fast=32.0, beta_slow=1.0),
        quant="fp8",
    ),
    # DeepSeek-V2: plain query projection, softmax router, group-limited greedy (2 of 4 groups by their best
    # expert), routed weights scaled and not renormalised, YaRN as V2-Lite has it (mscale = mscale_all_dim).
    "deepseek_v2": dict(
        cls="DeepseekV2Config",
        vocab_size=TOKENIZER_VOCAB,
        num_key_value_heads=4,
        intermediate_size=64,
        moe_intermediate_size=24,
        n_routed_experts=8,
        n_group=4,
        topk_group=2,
        topk_method="group_limited_greedy",
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        q_lora_rank=None,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=8,
        routed_scaling_factor=1.5,
        norm_topk_prob=False,
        rms_norm_eps=1e-5,  # Moonlight's; the latent norms keep transformers' fixed 1e-6
        tie_word_embeddings=False,
        rope=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0, original_max_position_embeddings=32,
                  mscale=0.707, mscale_all_dim=0.707, beta_fast=32.0, beta_slow=1.0),
    ),
    # gpt-oss: a sliding (window 6, shorter than the prompts) and a full layer, sinks, q/k/v/o biases, router
    # bias, clamped SwiGLU experts with biases (limit 1.5 so the clamp bites), YaRN without truncation,
    # experts in MXFP4.
    "gpt_oss": dict(
        cls="GptOssConfig",
        vocab_size=TOKENIZER_VOCAB,
        head_dim=16,
        intermediate_size=64,
        num_local_experts=4,
        sliding_window=6,
        layer_types=["sliding_attention", "full_attention"],
        swiglu_limit=1.5,
        attention_bias=True,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope=dict(rope_type="yarn", rope_theta=15000.0, factor=4.0, beta_fast=32.0, beta_slow=1.0,
                  truncate=False, original_max_position_embeddings=64),
        quant="mxfp4",
    ),
}
QUANT_NOTES = {
    "fp8": (
        "The files hold the attention, dense-MLP, shared- and routed-expert Linear weights as float8_e4m3fn "
        "with a float32 weight_scale_inv per 128x128 block (powers of two, so value * scale is exact in "
        "bfloat16), quantised by this script from the random bf16 model; the reference model is what "
        "transformers loads from these FP8 files itself (FineGrainedFP8Config(dequantize=True), float32), and "
        "the script checks transformers' dequantisation (Fp8Dequantize) equals its own numpy one bit for bit."
    ),
    "mxfp4": (
        "The files hold the experts' gate_up_proj and down_proj as MXFP4 (_blocks uint8: two E2M1 codes per "
        "byte, low nibble first, 32 values per E8M0 _scales byte), quantised by this script from the random "
        "bf16 model (nearest code, scale 2**(floor(log2(amax)) - 2)); the reference model is what transformers "
        "loads from these files itself (Mxfp4Config(dequantize=True), float32), and the script checks "
        "transformers' convert_moe_packed_tensors equals its own numpy dequantisation bit for bit."
    ),
}
NEWER = ("deepseek_v3", "deepseek_v2", "gpt_oss")
FP8_QUANTIZED = re.compile(  # DeepSeek-V3's FP8 Linear weights: attention, dense MLP, experts
    r"self_attn\.(q_a|q_b|q|kv_a|kv_b|o)_proj(_with_mqa)?\.weight$"
    r"|mlp\.(experts\.\d+\.|shared_experts\.)?(gate|up|down)_proj\.weight$"
)
FP8_CONFIG = {
    "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]
}
MXFP4_CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": [
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}


def build_tokenizer():
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer=trainer)
    assert tok.get_vocab_size() == TOKENIZER_VOCAB, tok.get_vocab_size()
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", 0)]
    )
    return tok


def make_config(family):
    spec = dict(FAMILIES[family])
    cls = getattr(transformers, spec.pop("cls"))
    spec.pop("quant", None)
    if "rope" in spec:
        spec["rope_parameters"] = dict(spec.pop("rope"))
    else:
        spec["rope_parameters"] = {"rope_type": "default", "rope_theta": spec.pop("rope_theta")}
    return cls(**{**COMMON, **spec})


def randomize(model, std, seed):
    """Every parameter random: matrices N(0, std), norm weights 1 + N(0, 0.2), biases N(0, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(".sinks"):  # large enough to take a real share of each softmax
                p.copy_(1.0 + r)
            elif name.endswith(".bias"):
                p.copy_(0.2 * r)
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * r)
            else:
                p.copy_(std * r)
        for name, b in model.named_buffers():  # DeepSeek-V3's selection bias is a buffer
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g, dtype=torch.float32))


def _gap(x, k):
    """Smallest gap between the k-th and (k+1)-th largest entry of each row of x (finite entries)."""
    top = torch.topk(x, k + 1, dim=-1).values
    return float((top[:, k - 1] - top[:, k]).min())


def _deepseek_gap(mod, logits, k, family):
    """Gaps of a DeepSeek router's two choices: the topk_group-th vs the next group score, and the k-th vs
    the (k+1)-th selection score inside the chosen groups (V3: sigmoid + bias, group = sum of its best two;
    V2: softmax, group = its best)."""
    groups, top_groups = mod.num_group or 1, mod.topk_group or 1
    scores = logits.float().sigmoid() if family == "deepseek_v3" else logits.float().softmax(-1)
    choice = scores + mod.e_score_correction_bias.float() if family == "deepseek_v3" else scores
    grouped = choice.view(-1, groups, choice.shape[-1] // groups)
    limited = family == "deepseek_v3" or mod.topk_method == "group_limited_greedy"
    if not limited or top_groups == groups:
        return _gap(choice, k)
    gscore = grouped.topk(2, -1).values.sum(-1) if family == "deepseek_v3" else grouped.max(-1).values
    gap = _gap(gscore, top_groups)
    keep = torch.zeros_like(gscore).scatter_(1, gscore.topk(top_groups, -1).indices, 1).bool()
    masked = choice.masked_fill(~keep.repeat_interleave(choice.shape[-1] // groups, -1), -1e9)
    return min(gap, _gap(masked, k))


def router_gaps(model, ids, family):
    """Smallest margin of any router decision over tokens and MoE layers, for one sequence: the gap
    between the k-th and (k+1)-th router probability (gpt-oss: of the softmax over all logits, whose order
    is the logits'), and for DeepSeek also the group choice's gap (_deepseek_gap)."""
    k = model.config.num_experts_per_tok
    gaps = []
    hooks = []
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if kind.endswith("TopKRouter"):
            def hook(mod, args, out):
                gaps.append(_gap(torch.softmax(out[0].float(), dim=-1), k))
        elif kind.endswith("TopkRouter"):  # DeepSeek
            def hook(mod, args, out):
                gaps.append(_deepseek_gap(mod, out[0], k, family))
        else:
            continue
        hooks.append(mod.register_forward_hook(hook))
    dense = getattr(model.config, "first_k_dense_replace", 0)
    assert len(hooks) == model.config.num_hidden_layers - dense, len(hooks)
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return min(gaps)


def load_reference_model(family, out_dir):
    """The model HF loads from the saved files in float32, eager attention. Quantised fixtures are
    dequantised by transformers itself (its FP8 / MXFP4 quantizers with dequantize=True)."""
    kwargs = {}
    quant = FAMILIES[family].get("quant")
    if quant == "fp8":
        kwargs["quantization_config"] = transformers.FineGrainedFP8Config(dequantize=True)
    elif quant == "mxfp4":
        kwargs["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
    return transformers.AutoModelForCausalLM.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation="eager", **kwargs
    )


def reference(family, out_dir, tok):
    model = load_reference_model(family, out_dir)
    model.eval()
    model.generation_config.eos_token_id = None  # else generate() falls back to it and stops at <|eos|>
    gen_cfg = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, bos_token_id=0, pad_token_id=2
    )
    records, logits_npz = [], {}
    min_gap, min_margin = float("inf"), float("inf")
    saved_tok = tokenizers.Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    auto_tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    for i, prompt in enumerate(PROMPTS):
        ids = tok.encode(prompt).ids
        assert saved_tok.encode(prompt).ids == ids and auto_tok(prompt)["input_ids"] == ids, (family, prompt)
        assert saved_tok.decode(ids, skip_special_tokens=True) == prompt
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
            out = model.generate(torch.tensor([ids]), generation_config=gen_cfg)
        completion = out[0, len(ids):].tolist()
        assert len(completion) == NEW_TOKENS, completion
        full = ids + completion
        with torch.no_grad():
            full_logits = model(torch.tensor([full])).logits[0].float()
        # Greedy tokens re-derived from one full forward pass (no cache) must be generate's tokens.
        step_logits = full_logits[len(ids) - 1 : -1]
        assert step_logits.argmax(-1).tolist() == completion, (family, i)
        top2 = torch.topk(step_logits, 2, dim=-1).values
        margin = float((top2[:, 0] - top2[:, 1]).min())
        gap = router_gaps(model, full, family)
        min_gap, min_margin = min(min_gap, gap), min(min_margin, margin)
        logits_npz[f"p{i}"] = logits.astype(np.float32)
        records.append(
            dict(
                prompt=prompt,
                prompt_ids=ids,
                greedy_ids=completion,
                logits_key=f"p{i}",
                min_router_gap=gap,
                min_greedy_margin=margin,
            )
        )
    return records, logits_npz, min_gap, min_margin


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rope(x, theta, pos):
    """HF's rotate-half rotary embedding of x [T, heads, head_dim]."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd)
    angles = pos[:, None] * inv[None]
    emb = np.concatenate([angles, angles], -1)
    cos, sin = np.cos(emb)[:, None], np.sin(emb)[:, None]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


def numpy_forward(fam, c, W, ids):
    """Independent float32 numpy forward pass from the saved tensors: each family's semantics, spelled out.

    c: config.json as a dict; W: tensor name -> float32 array; returns logits [T, vocab_size].
    """
    if fam in NEWER:
        return hf_fixture_numpy.forward(fam, c, W, ids)
    H, KV, D = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    hd = c.get("head_dim") or D // H
    eps, theta = c["rms_norm_eps"], c["rope_parameters"]["rope_theta"]
    k = c["num_experts_per_tok"]
    norm_topk = True if fam == "mixtral" else c["norm_topk_prob"]  # Mixtral always renormalises
    T = len(ids)
    pos = np.arange(T, dtype=np.float32)
    causal = np.triu(np.full((T, T), -np.inf, np.float32), 1)
    x = W["model.embed_tokens.weight"][ids]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        a = p + "self_attn."
        xn = rms(x, W[p + "input_layernorm.weight"], eps)
        q, kk, v = [xn @ W[a + n + "_proj.weight"].T + W.get(a + n + "_proj.bias", 0) for n in "qkv"]
        if fam == "olmoe":  # one norm over all heads, before the split into heads
            q, kk = rms(q, W[a + "q_norm.weight"], eps), rms(kk, W[a + "k_norm.weight"], eps)
        q, kk, v = q.reshape(T, H, hd), kk.reshape(T, KV, hd), v.reshape(T, KV, hd)
        if fam == "qwen3_moe":  # per head, over head_dim
            q, kk = rms(q, W[a + "q_norm.weight"], eps), rms(kk, W[a + "k_norm.weight"], eps)
        q, kk = rope(q, theta, pos), rope(kk, theta, pos)
        kk, v = np.repeat(kk, H // KV, 1), np.repeat(v, H // KV, 1)  # query head h reads KV head h // (H/KV)
        probs = softmax(np.einsum("thd,shd->hts", q, kk) * hd**-0.5 + causal)
        x = x + np.einsum("hts,shd->thd", probs, v).reshape(T, H * hd) @ W[a + "o_proj.weight"].T
        xn = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        m = p + ("block_sparse_moe." if fam == "mixtral" else "mlp.")
        router = softmax(xn @ W[m + "gate.weight"].T)  # softmax over all experts, then top-k
        top = np.argsort(-router, -1)[:, :k]
        weight = np.take_along_axis(router, top, -1)
        if norm_topk:
            weight = weight / weight.sum(-1, keepdims=True)
        names = ("w1", "w3", "w2") if fam == "mixtral" else ("gate_proj", "up_proj", "down_proj")
        out = np.zeros_like(x)
        for t in range(T):
            for j in range(k):
                g, u, dn = (W[m + f"experts.{top[t, j]}.{n}.weight"] for n in names)
                out[t] += weight[t, j] * ((silu(xn[t] @ g.T) * (xn[t] @ u.T)) @ dn.T)
        if fam == "qwen2_moe":  # shared expert, scaled by its sigmoid gate
            se = m + "shared_expert."
            shared = silu(xn @ W[se + "gate_proj.weight"].T) * (xn @ W[se + "up_proj.weight"].T)
            shared = shared @ W[se + "down_proj.weight"].T
            out += shared / (1 + np.exp(-(xn @ W[m + "shared_expert_gate.weight"].T)))
        x = x + out
    x = rms(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if c["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.T

def numpy_weights(out_dir):
    """Every tensor of the saved files as float32 numpy, FP8 and MXFP4 ones dequantised by this script's own
    numpy code (hf_fixture_quant), each checked against transformers' own dequantisation."""
    import glob

    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    raw = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "*.safetensors"))):
        raw.update(load_file(path))
    W = {}
    for name, t in raw.items():
        if name.endswith(("weight_scale_inv", "_scales")):
            continue
        if name.endswith("_blocks"):
            base = name[: -len("_blocks")]
            W[base] = hf_fixture_quant.mxfp4_dequantize_numpy(t.numpy(), raw[base + "_scales"].numpy())
            theirs = convert_moe_packed_tensors(t, raw[base + "_scales"], dtype=torch.float32).numpy()
            assert np.array_equal(W[base], theirs), base
        elif t.dtype == torch.float8_e4m3fn:
            scale = raw[name + "_scale_inv"]
            W[name] = hf_fixture_quant.fp8_dequantize_numpy(t.view(torch.uint8).numpy(), scale.numpy())
            theirs = Fp8Dequantize(None)._dequantize_one(t, scale, output_dtype=torch.float32).numpy()
            assert np.array_equal(W[name], theirs), name
        else:
            W[name] = t.float().numpy()
    return W


def numpy_check(family, out_dir, records, logits_npz):
    """Largest |numpy logits - HF logits| over the prompts; asserts numpy's greedy tokens are HF's."""
    with open(os.path.join(out_dir, "config.json")) as f:
        c = json.load(f)
    W = numpy_weights(out_dir)
    worst = 0.0
    for r in records:
        lg = numpy_forward(family, c, W, r["prompt_ids"])
        worst = max(worst, float(np.abs(lg - logits_npz[r["logits_key"]]).max()))
        seq = list(r["prompt_ids"])
        for _ in range(len(r["greedy_ids"])):
            seq.append(int(numpy_forward(family, c, W, seq)[-1].argmax()))
        assert seq[len(r["prompt_ids"]):] == r["greedy_ids"], (family, r["prompt"])
    assert worst < 1e-4, (family, worst)
    return worst


def quantize_files(family, out_dir):
    """Rewrites the saved bf16 files of a quantised family as its checkpoints ship: DeepSeek-V3's attention,
    dense and expert Linear weights as FP8 with 128x128 block scales (weight_scale_inv, float32), its
    selection bias in float32 (bf16 values: what the model was saved with); gpt-oss's experts as MXFP4
    blocks and scales. config.json gains the quantization_config those checkpoints have."""
    quant = FAMILIES[family].get("quant")
    if not quant:
        return
    path = os.path.join(out_dir, "model.safetensors")
    tensors, out = load_file(path), {}
    for name, t in tensors.items():
        if quant == "fp8" and FP8_QUANTIZED.search(name):
            q, scale = hf_fixture_quant.fp8_quantize(t)
            out[name], out[name + "_scale_inv"] = q, scale
        elif quant == "fp8" and name.endswith("e_score_correction_bias"):
            out[name] = t.float()
        elif quant == "mxfp4" and name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            out[name + "_blocks"], out[name + "_scales"] = hf_fixture_quant.mxfp4_quantize(t)
        else:
            out[name] = t
    save_file(out, path, metadata={"format": "pt"})
    os.chmod(path, 0o644)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = FP8_CONFIG if quant == "fp8" else MXFP4_CONFIG
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def build_family(family, tok, hf_tok, root):
    out_dir = os.path.join(root, family)
    rejected = []
    for seed in range(100):
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        config = make_config(family)
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        randomize(model, config.initializer_range, seed)
        model = model.to(torch.bfloat16)
        model.generation_config.eos_token_id = 1
        kwargs = {}
        if family == "mixtral":  # two shards
            nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
            kwargs["max_shard_size"] = int(nbytes * 0.6)
        model.save_pretrained(out_dir, **kwargs)
        quantize_files(family, out_dir)
        hf_tok.save_pretrained(out_dir)
        records, logits_npz, gap, margin = reference(family, out_dir, tok)
        print(f"{family} seed {seed}: min router gap {gap:.3g}, min greedy margin {margin:.3g}", flush=True)
        if gap > ROUTER_GAP_MIN and margin > MARGIN_MIN:
            break
        rejected.append(dict(seed=seed, min_router_gap=gap, min_greedy_margin=margin))
    else:
        raise RuntimeError(f"{family}: no seed without a near-tie")
    np.savez(os.path.join(out_dir, "reference_logits.npz"), **logits_npz)
    numpy_diff = numpy_check(family, out_dir, records, logits_npz)
    print(f"{family}: numpy forward vs HF logits max |diff| {numpy_diff:.3g}", flush=True)
    ref = dict(
        family=family,
        seed=seed,
        note=(
            "Weights saved in bfloat16; logits are HF's full forward in float32 of the model loaded back from "
            "these files (eager attention), one array [prompt tokens, vocab_size] per prompt in "
            "reference_logits.npz under logits_key. greedy_ids: model.generate(do_sample=False, "
            f"max_new_tokens={NEW_TOKENS}) with eos_token_id=None (never stops early); prompt_ids include the "
            "<|bos|> the tokenizer's post-processor prepends. min_router_gap: smallest gap between the k-th "
            "and (k+1)-th router softmax probability over every MoE layer and every token of prompt + "
            "completion; min_greedy_margin: smallest top-1 minus top-2 logit of the greedy steps. "
            "rejected_seeds: the seeds tried first, rejected for a router gap or greedy margin under the "
            "thresholds. numpy_forward_max_abs_diff: largest |logit| difference of this script's independent "
            "numpy forward pass (numpy_forward) from HF's, whose greedy tokens are also HF's."
        ),
        quantization=QUANT_NOTES.get(FAMILIES[family].get("quant")),
        min_router_gap=gap,
        min_greedy_margin=margin,
        router_gap_threshold=ROUTER_GAP_MIN,
        greedy_margin_threshold=MARGIN_MIN,
        rejected_seeds=rejected,
        numpy_forward_max_abs_diff=numpy_diff,
        new_tokens=NEW_TOKENS,
        prompts=records,
        versions=dict(
            torch=torch.__version__,
            transformers=transformers.__version__,
            tokenizers=tokenizers.__version__,
            safetensors=safetensors.__version__,
            numpy=np.__version__,
            python=sys.version.split()[0],
        ),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")


def main():
    root = os.path.normpath(ROOT)
    os.makedirs(root, exist_ok=True)
    tok = build_tokenizer()
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    families = sys.argv[1:] or list(FAMILIES)
    for family in families:
        build_family(family, tok, hf_tok, root)


if __name__ == "__main__":
    main()
