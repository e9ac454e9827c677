r"""Base model config: the default MoE decoder and its sharding rules.

Run the end-to-end demo with it:
  python scripts/generate.py --config=configs/base.py --config.model.num_experts=16

Arg (optional, big_vision style): `size=base|tiny`, e.g. `--config=configs/base.py:size=tiny`.
"""
import ml_collections

from moe_serve import config as config_lib

# Logical axis name -> mesh axis. Only configs map names to mesh axes (docs/design.md section 3).
LOGICAL_AXIS_RULES = (
    ("vocab", "tensor"),
    ("embed", None),
    ("norm", None),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("exp", "expert"),
    ("embed_moe", None),
    ("mlp_moe", "tensor"),
    ("router_embed", None),
    ("router_exp", None),
    ("activation_batch", "data"),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_tokens", "data"),
    # Expert-parallel dispatch (model/dispatch_grouped.py): token groups [G, S, D] over
    # data x expert, expert buffers [E, G, C, D] with G over data (E is on `exp`).
    ("exp_groups", ("data", "expert")),
    ("exp_buffer_groups", "data"),
    ("decode_batch", "data"),
    ("cache_seq", None),
    ("cache_heads", "tensor"),
    ("cache_kv", None),
)


def model_config(size="base"):
  """The model section; `size` is `base` (default model) or `tiny` (tests)."""
  m = ml_collections.ConfigDict()
  m.vocab_size = 260  # byte tokenizer: 256 bytes + PAD/BOS/EOS, rounded up
  m.d_model = 128
  m.num_layers = 4
  m.num_heads = 4
  m.num_kv_heads = 2
  m.head_dim = 32
  m.d_ff = 512  # dense FFN blocks
  m.num_experts = 8
  m.d_ff_expert = 256
  m.moe_every = 1  # layer i is MoE when (i + 1) % moe_every == 0
  m.shared_expert = False
  m.tie_embeddings = True
  m.max_len = 256
  m.rope_theta = 10_000.0
  m.norm_eps = 1e-6
  m.dtype = "float32"  # compute dtype
  m.update(config_lib.MODEL_OPTION_DEFAULTS)  # param_dtype, attn_bias, qk_norm, ... (config.py)
  m.router = ml_collections.ConfigDict(dict(
      kind="topk",  # topk | expert_choice | soft | hash
      k=2,
      renormalize=True,
      capacity_scope="none",  # batch | group | sequence | none (dropless)
      capacity_factor_prefill=1.25,
      capacity_factor_decode=1.25,
      group_size=64,
      min_capacity=1,
      priority="token",  # position | token | score
      dispatch="einsum",  # einsum | gather | ragged | sorted (serving only: configs/serve_default.py)
      jitter=0.0,  # multiplicative router-input noise, training only
      lb_loss_weight=0.01,
      z_loss_weight=1e-3,
  ))
  m.router.update(config_lib.ROUTER_OPTION_DEFAULTS)  # score, bias, groups, scale (config/model.py)
  if size == "tiny":
    m.update(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64,
             num_experts=4, d_ff_expert=32, max_len=64)
    m.router.group_size = 8
  elif size != "base":
    raise config_lib.ConfigError(f"config arg size={size!r} is not one of ['base', 'tiny']")
  return m


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, size="base")
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.params_dir = ""  # a model directory (moe_serve export or Hugging Face); "" = random init
  cfg.model = model_config(arg.size)
  cfg.mesh = ml_collections.ConfigDict(dict(data=-1, expert=1, tensor=1))  # -1 fills the rest
  cfg.logical_axis_rules = LOGICAL_AXIS_RULES
  # generate.py demo: prompts prefilled in one chunk each, then greedy decode. Prompts: demo (a
  # fixed handful) | eval (the first eval-set prompt of each domain).
  cfg.generate = ml_collections.ConfigDict(dict(num_prompts=4, max_new_tokens=32, chunk=32,
                                                prompts="demo"))
  return cfg
