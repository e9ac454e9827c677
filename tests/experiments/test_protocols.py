"""The peers' protocols (experiments/protocols.py) on the tiny random model: with
model.batch_invariant on and scope none, every protocol gives one unique output per prompt, with
the prefix cache warm across runs too."""
import json

from configs import serve_default
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve.experiments import protocols

SIZES = protocols.Sizes(trials=2, batch_sizes=(1, 3, 6), num_prompts=3, max_new_tokens=5,
                        max_prompt_len=40)


def test_every_protocol_gives_one_output_per_prompt_with_the_mode_on_and_a_warm_cache(tmp_path):
  cfg = serve_default.get_config("size=tiny")
  cfg.serve.update(plots=False, max_num_seqs=6)
  cfg.serve.buckets.update(decode_rows=(6,), prefill_rows=(0, 2), chunk_lens=(8,), kv_lens=(32,))
  cfg = config_lib.validate_serve(config_lib.validate(cfg))
  params, _ = loading.load(cfg, log=lambda *_: None)
  # `invariant_cache` is `invariant` plus the cache (without it: the HF fixture test below and
  # tests/serving/test_engine.py); blocks computed in earlier batches are reused.
  cache_setting = protocols.SETTINGS[3]
  rows = protocols.run_protocols(cfg, params, loading.tokenizer(cfg),
                                 settings=[cache_setting], sizes=SIZES, log=lambda *_: None)
  assert [r["protocol"] for r in rows] == list(protocols.PROTOCOLS)
  assert all(r["cached_tokens"] > 0 for r in rows if r["protocol"] != "needle")
  for r in rows:
    assert r["setting"] == "invariant_cache" and r["passed"], r
    assert r["unique_max"] == r["unique_logprobs_max"] == 1, r  # log-probs bitwise too
    assert r["appearances_min"] >= 2 and r["step_shapes"] >= 2, r  # shapes did vary
  protocols.write(tmp_path, rows, ["command: test"], {"sizes": SIZES._asdict()})
  table = (tmp_path / "protocols.md").read_text()
  assert table.startswith("command: test\n") and table.count("| pass |") == len(rows)
  assert json.loads((tmp_path / "protocols.json").read_text())["rows"] == rows


def test_settings_set_the_mode_and_scope():
  cfg = serve_default.get_config("size=tiny")
  on, off, batch, cache, batch_cache = (protocols.setting_config(cfg, s)
                                        for s in protocols.SETTINGS)
  assert batch_cache.serve.prefix_cache and batch_cache.model.router.capacity_scope == "batch"
  assert cache.serve.prefix_cache and not on.serve.prefix_cache
  assert (cache.model.batch_invariant, cache.model.router.capacity_scope) == (True, "none")
  assert (on.model.batch_invariant, on.model.router.capacity_scope) == (True, "none")
  assert (off.model.batch_invariant, off.model.router.capacity_scope) == (False, "none")
  assert (batch.model.batch_invariant, batch.model.router.capacity_scope) == (True, "batch")
  assert batch.model.router.capacity_factor_decode == 1.0
  assert not cfg.model.batch_invariant  # a copy


def test_hf_fixture_with_the_mode_on_and_resolve_keeps_the_mode():
  cfg = serve_default.get_config("size=tiny")
  cfg.serve.update(plots=False, max_num_seqs=4)
  cfg.serve.buckets.update(decode_rows=(4,), prefill_rows=(0, 2), chunk_lens=(8,), kv_lens=(32,))
  cfg.params_dir = "tests/fixtures/hf/qwen3_moe"
  cfg.model.batch_invariant = True
  cfg = config_lib.validate_serve(loading.resolve(cfg, log=lambda *_: None))
  assert cfg.model.batch_invariant  # a serving choice: params_dir's model does not reset it
  params, _ = loading.load(cfg, log=lambda *_: None)
  sizes = SIZES._replace(trials=2, batch_sizes=(4,), max_prompt_len=cfg.model.max_len - 8)
  rows = protocols.run_protocols(cfg, params, loading.tokenizer(cfg), ("needle",),
                                 protocols.SETTINGS[:1], sizes, log=lambda *_: None)
  assert all(r["passed"] and r["unique_logprobs_max"] == 1 for r in rows), rows
