"""Each bad config stops before anything is built, naming the field, the value and the fix.

One table per section of moe_serve/config/, each case run through `validate_for` with the kind
whose config holds the section; then validate_for's kinds, loading.resolve_for's order, and
parse_arg. Pure Python: nothing here compiles or loads parameters.
"""
import json
import os

import pytest

from configs import base, generate_default, serve_default, study_default, train_default
from moe_serve import checkpoint, loading
from moe_serve import config as config_lib

_BURSTGPT = os.path.join(os.path.dirname(__file__), "fixtures", "traces", "burstgpt.csv")
_CONFIGS = {  # the tiny config of each kind the tables use
    "generate": lambda: base.get_config("size=tiny"),
    "serve": lambda: serve_default.get_config("size=tiny"),
    "sweep": lambda: study_default.get_config("size=tiny"),
    "train": lambda: train_default.get_config("size=tiny"),
}


def _changed(cfg, changes):
  for path, value in changes.items():
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def _check(kind, changes, words):
  """ConfigError from validate_for(kind) on the tiny config of `kind` with `changes`, holding each
  of `words` (a string, or a tuple of the strings it holds in that order)."""
  cfg = _changed(_CONFIGS[kind](), changes)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate_for(cfg, kind)
  message, at = str(e.value), 0
  for w in (words,) if isinstance(words, str) else words:
    assert w in message[at:], (w, message)
    at = message.index(w, at) + len(w)


def _ids(table):
  return ["+".join(f"{k}={v!r}"[:40] for k, v in changes.items()) for changes, _ in table]


_MODEL = [  # the model section and its router (config/model.py)
    ({"model.num_heads": 6, "model.num_kv_heads": 4},
     "model.num_heads=6 must be divisible by model.num_kv_heads=4; valid num_kv_heads: "
     "[1, 2, 3, 6]"),
    ({"model.router.k": 5}, "model.router.k=5 exceeds model.num_experts=4; use 1..4"),
    ({"model.router.k": 9}, "model.router.k=9 exceeds model.num_experts=4"),
    ({"model.router.kind": "switchy"},
     "model.router.kind='switchy' is not one of ['topk', 'expert_choice', 'soft', 'hash']"),
    ({"model.d_model": 0}, "model.d_model=0 must be a positive integer"),
    ({"model.num_layers": -2}, "model.num_layers=-2 must be a positive integer"),
    ({"model.num_experts": 0}, "model.num_experts=0 must be a positive integer"),
    ({"model.max_len": 0}, "model.max_len=0 must be a positive integer"),
    ({"model.moe_every": 3}, "model.moe_every=3 is out of range: use 1..model.num_layers=2"),
    ({"model.head_dim": 7}, "model.head_dim=7 must be even"),
    ({"model.dtype": "float8"}, "model.dtype='float8' is not one of"),
    ({"model.router.capacity_scope": "global"}, "model.router.capacity_scope='global'"),
    ({"model.router.priority": "random"}, "model.router.priority='random'"),
    ({"model.router.dispatch": "magic"}, "model.router.dispatch='magic'"),
    ({"model.router.capacity_factor_decode": 0.0},
     "model.router.capacity_factor_decode=0.0 must be a finite number > 0"),
    ({"model.router.min_capacity": -1}, "model.router.min_capacity=-1 must be an integer >= 0"),
    ({"model.router.dispatch": "ragged", "model.router.capacity_scope": "batch"},
     "dispatch='ragged' is dropless and needs capacity_scope='none'"),
    ({"model.attention": "mla", "model.kv_lora_rank": 8, "model.qk_nope_head_dim": 4,
      "model.qk_rope_head_dim": 4, "model.v_head_dim": 4, "model.qk_norm": "head"},
     "model.attention='mla' has no q/k/v projections for model.attn_bias=False or "
     "model.qk_norm='head'"),
]


@pytest.mark.parametrize("changes, words", _MODEL, ids=_ids(_MODEL))
def test_model_errors(changes, words):
  _check("generate", changes, words)


_MESH = [  # the mesh against the model, without devices (config/mesh.py; against the devices:
    # tests/parallel/test_mesh.py)
    ({"mesh.data": -1, "mesh.expert": 3, "mesh.tensor": 1},
     "model.num_experts=4 is not divisible by mesh.expert=3"),
    ({"mesh.expert": 2, "model.batch_invariant": True},
     "model.batch_invariant needs every expert on every device, but mesh.expert=2"),
]


@pytest.mark.parametrize("changes, words", _MESH, ids=_ids(_MESH))
def test_mesh_errors(changes, words):
  _check("generate", changes, words)


def test_a_mesh_that_divides_the_model_passes_without_devices():
  cfg = _changed(base.get_config("size=tiny"), {"mesh.data": -1, "mesh.expert": 2,
                                                "mesh.tensor": 2})
  config_lib.validate_for(cfg, "generate")


_SERVE = [  # the serve section, its buckets and the prefix cache (config/serve.py)
    ({"serve.policy": "lifo"}, "serve.policy='lifo' is not one of"),
    ({"serve.batching": "dynamic"}, "serve.batching='dynamic'"),
    ({"serve.max_num_seqs": 0}, "serve.max_num_seqs=0 must be a positive integer"),
    ({"serve.kv_block_size": -16}, "serve.kv_block_size=-16"),
    ({"serve.buckets.decode_rows": (4,)}, "cannot hold serve.max_num_seqs=8"),
    ({"serve.buckets.prefill_rows": (0,)}, "has no bucket with a prefill row"),
    ({"serve.buckets.chunk_lens": (0,)}, "serve.buckets.chunk_lens=(0,)"),
    ({"serve.buckets.chunk_lens": tuple(range(1, 20))}, "38 step shapes"),
    ({"serve.max_num_batched_tokens": 10}, "use >= 16"),
    ({"serve.eos_id": 999}, "serve.eos_id=999 is outside the vocabulary"),
    ({"serve.policy": "lpm"}, "serve.policy=lpm"),
    ({"serve.prefix_cache": True, "serve.overlap": True}, "serve.overlap"),
    ({"serve.prefix_cache": True, "serve.prompt_logprobs": True}, "serve.prompt_logprobs"),
]


@pytest.mark.parametrize("changes, words", _SERVE, ids=_ids(_SERVE))
def test_serve_errors(changes, words):
  _check("serve", changes, words)


_CLOCK = [  # config/clock.py
    ({"clock.mode": "wall"}, "clock.mode='wall'"),
    ({"clock.coef.decode_kv": -1.0}, "clock.coef.decode_kv=-1.0 must be a finite number >= 0"),
    ({"clock.per_kv_s": 1e-6}, "clock.per_kv_s is gone"),
]


@pytest.mark.parametrize("changes, words", _CLOCK, ids=_ids(_CLOCK))
def test_clock_errors(changes, words):
  _check("serve", changes, words)


_WORKLOAD = [  # config/workload.py
    ({"workload.arrival.kind": "burst"}, "workload.arrival.kind='burst'"),
    ({"workload.arrival.rate": 0.0}, "workload.arrival.rate=0.0 must be a finite number > 0"),
    ({"workload.prompt_len.low": 30},
     "workload.prompt_len.low=30 > workload.prompt_len.high=24"),
    ({"workload.output_len.kind": "zipf"}, "workload.output_len.kind='zipf'"),
    ({"workload.top_p": 0.0}, "workload.top_p=0.0 must be in (0, 1]"),
    ({"workload.num_priorities": 0}, "workload.num_priorities=0"),
    ({"workload.seed": -1}, "workload.seed=-1 must be an integer >= 0"),
    ({"workload.num_requests": -3}, "workload.num_requests=-3 must be an integer >= 0"),
    ({"workload.mix.poetry": 1.0}, ("workload.mix=", "poetry", "serve.domains")),
    ({"workload.trace_format": "burstgpt"}, "needs workload.trace=PATH"),
    ({"workload.prompt_source": "random"}, "workload.prompt_source"),
    ({"workload.trace": "/nonexistent/t.csv"}, "is not a file"),
    ({"workload.trace": _BURSTGPT, "workload.time_scale": 0.0}, "workload.time_scale"),
    ({"workload.trace": _BURSTGPT, "workload.max_requests": -1}, "workload.max_requests"),
]


@pytest.mark.parametrize("changes, words", _WORKLOAD, ids=_ids(_WORKLOAD))
def test_workload_errors(changes, words):
  _check("serve", changes, words)


_STUDY = [  # config/study.py
    ({"study.mode": "compositon"},
     "study.mode='compositon' is not one of ['traffic', 'composition', 'prefix']"),
    ({"study.mode": "prefix"}, ("study.mode=prefix", "set serve.prefix_cache=true")),
    ({"study.co_domains": "mixd"}, "study.co_domains='mixd' is not one of ['same', 'mixed']"),
    ({"study.load": 0.0}, "study.load=0.0 must be a finite number > 0"),
    ({"study.repeats": 0}, "study.repeats=0 must be a positive integer"),
    ({"study.target_domains": ("add", "poetry")}, "unknown: ['poetry']"),
]


@pytest.mark.parametrize("changes, words", _STUDY, ids=_ids(_STUDY))
def test_study_errors(changes, words):
  _check("sweep", changes, words)


_TRAIN = [  # the data and train sections (config/train.py)
    ({"data.seq_len": 1000}, "data.seq_len=1000 exceeds model.max_len=160"),
    ({"data.mixture": {"poetry": 1.0}}, "data.mixture={'poetry': 1.0} must map domains"),
    ({"model.router.dispatch": "sorted"}, "dispatch='sorted' is for serving"),
]


@pytest.mark.parametrize("changes, words", _TRAIN, ids=_ids(_TRAIN))
def test_train_errors(changes, words):
  _check("train", changes, words)


@pytest.mark.parametrize("kind, get_config, arg", [
    ("generate", base.get_config, None), ("generate", base.get_config, "size=tiny"),
    ("generate", generate_default.get_config, None),
    ("train", train_default.get_config, None), ("train", train_default.get_config, "size=tiny"),
    ("serve", serve_default.get_config, None), ("serve", serve_default.get_config, "size=tiny"),
    ("calibrate", serve_default.get_config, "size=tiny"),
    ("calibrate", study_default.get_config, "size=tiny"),
    ("eval", serve_default.get_config, None),
    ("sweep", study_default.get_config, None), ("sweep", study_default.get_config, "size=tiny"),
])
def test_default_configs_pass_their_kind(kind, get_config, arg):
  cfg = get_config(arg)
  assert config_lib.validate_for(cfg, kind) is cfg


def test_every_kind_names_a_missing_section_and_where_to_start():
  assert set(config_lib.KINDS) == {"generate", "train", "serve", "calibrate", "eval", "sweep"}
  with pytest.raises(config_lib.ConfigError, match=r"config has no `serve` section, which a serve "
                                                   r"run reads; start from configs/serve_default"):
    config_lib.validate_for(base.get_config("size=tiny"), "serve")
  with pytest.raises(config_lib.ConfigError, match=r"no `study` section.*configs/study_default"):
    config_lib.validate_for(serve_default.get_config("size=tiny"), "sweep")
  with pytest.raises(ValueError, match=r"validate_for kind 'study' is not one of \['generate'"):
    config_lib.validate_for(study_default.get_config("size=tiny"), "study")


def test_resolve_for_checks_the_config_before_and_after_the_directory(tmp_path):
  """A bad field is named before params_dir is read; the directory's architecture is then
  checked with the serving sections (here its smaller vocabulary against serve.eos_id)."""
  cfg = serve_default.get_config("size=tiny")
  cfg.params_dir = str(tmp_path / "missing")
  with pytest.raises(checkpoint.CheckpointError, match="is not a directory"):
    loading.resolve_for(cfg, "serve", log=lambda *_: None)
  cfg.serve.policy = "lifo"
  with pytest.raises(config_lib.ConfigError, match="serve.policy='lifo'"):
    loading.resolve_for(cfg, "serve", log=lambda *_: None)

  model = base.get_config("size=tiny").model
  model.vocab_size = 200
  (tmp_path / "config.json").write_text(json.dumps({"model": model.to_dict()}))
  cfg = serve_default.get_config("size=tiny")
  cfg.update(params_dir=str(tmp_path))
  cfg.serve.eos_id = 250
  with pytest.raises(config_lib.ConfigError, match=r"serve.eos_id=250 is outside the vocabulary "
                                                   r"\[0, 200\)"):
    loading.resolve_for(cfg, "serve", log=lambda *_: None)
  cfg.serve.eos_id = 2
  assert loading.resolve_for(cfg, "serve", log=lambda *_: None).model.vocab_size == 200


def test_parse_arg_types_and_typos():
  arg = config_lib.parse_arg("size=tiny,n=3,on=false,f=0.5", size="base", n=1, on=True, f=1.0)
  assert (arg.size, arg.n, arg.on, arg.f) == ("tiny", 3, False, 0.5)
  with pytest.raises(config_lib.ConfigError, match="unknown config arg 'sise'"):
    config_lib.parse_arg("sise=tiny", size="base")
  with pytest.raises(config_lib.ConfigError, match="not of type int"):
    config_lib.parse_arg("n=three", n=1)
  with pytest.raises(config_lib.ConfigError, match="size='huge'"):
    base.get_config("size=huge")
