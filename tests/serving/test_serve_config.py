"""configs/serve_default.py validates, and bad serve/clock/workload fields name field and fix."""
import pytest

from configs import serve_default
from moe_serve import config as config_lib


@pytest.mark.parametrize("size", ["base", "tiny"])
def test_defaults_validate(size):
  cfg = serve_default.get_config(f"size={size}")
  config_lib.validate(cfg)
  config_lib.validate_serve(cfg)


@pytest.mark.parametrize("path, value, words", [
    ("serve.policy", "lifo", "serve.policy='lifo' is not one of"),
    ("serve.batching", "dynamic", "serve.batching='dynamic'"),
    ("serve.max_num_seqs", 0, "serve.max_num_seqs=0 must be a positive integer"),
    ("serve.kv_block_size", -16, "serve.kv_block_size=-16"),
    ("serve.buckets.decode_rows", (4,), "cannot hold serve.max_num_seqs=8"),
    ("serve.buckets.prefill_rows", (0,), "has no bucket with a prefill row"),
    ("serve.buckets.chunk_lens", (0,), "serve.buckets.chunk_lens=(0,)"),
    ("serve.buckets.chunk_lens", tuple(range(1, 20)), "38 step shapes"),
    ("serve.max_num_batched_tokens", 10, "use >= 16"),
    ("serve.eos_id", 999, "serve.eos_id=999 is outside the vocabulary"),
    ("clock.mode", "wall", "clock.mode='wall'"),
    ("clock.coef.decode_kv", -1.0, "clock.coef.decode_kv=-1.0 must be a finite number >= 0"),
    ("clock.per_kv_s", 1e-6, "clock.per_kv_s is gone"),
    ("workload.arrival.kind", "burst", "workload.arrival.kind='burst'"),
    ("workload.arrival.rate", 0.0, "workload.arrival.rate=0.0 must be a finite number > 0"),
    ("workload.prompt_len.low", 30, "workload.prompt_len.low=30 > workload.prompt_len.high=24"),
    ("workload.output_len.kind", "zipf", "workload.output_len.kind='zipf'"),
    ("workload.top_p", 0.0, "workload.top_p=0.0 must be in (0, 1]"),
    ("workload.num_priorities", 0, "workload.num_priorities=0"),
])
def test_bad_fields(path, value, words):
  cfg = serve_default.get_config("size=tiny")
  *parents, leaf = path.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[").replace("]", r"\]")):
    config_lib.validate_serve(cfg)


def test_mix_domains_must_be_served():
  cfg = serve_default.get_config("size=tiny")
  cfg.workload.mix["poetry"] = 1.0
  with pytest.raises(config_lib.ConfigError, match="workload.mix=.*poetry.*serve.domains"):
    config_lib.validate_serve(cfg)
