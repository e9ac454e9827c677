r"""The peers' batch-invariance protocols on our engine (moe_serve/experiments/protocols.py).

  python scripts/invariance_check.py --config=configs/serve_default.py --workdir=runs/protocols
  python scripts/invariance_check.py --config=configs/serve_default.py --workdir=runs/protocols \
      --protocols=needle,bitwise --settings=invariant --trials=5 --batch_sizes=1,2,4,8,16
  python scripts/invariance_check.py --config=configs/serve_default.py:size=tiny --workdir=runs/p
  python scripts/invariance_check.py --config=configs/serve_default.py --workdir=runs/p_hf \
      --config.params_dir=tests/fixtures/hf/qwen3_moe   # prompts from the model's tokenizer.json

Protocols: vLLM's needle and bitwise tests (tests/v1/generation/test_batch_invariance.py) and
SGLang's single / mixed / prefix modes (python/sglang/test/test_deterministic.py), each under the
settings `invariant` (model.batch_invariant on, capacity_scope none), `off` (the mode off),
`invariant_batch` (on, capacity_scope batch at factor 1.0, where routing may still diverge), and
`invariant_cache` / `invariant_batch_cache` (the first and third with serve.prefix_cache kept
warm across runs: prompts reuse blocks computed in other batches).
All requests of a batch arrive at t=0 on the config's engine and step buckets (serve_default's
buckets: step shapes follow the load). A protocol passes with one unique output per prompt
(tokens; tokens and log-probs for `bitwise`). Writes <workdir>/protocols.md (the table) and
protocols.json (rows and provenance). The config's own batch_invariant and capacity_scope are
replaced by each setting's; its dispatch, buckets and capacity factors are kept.
"""
import sys

from absl import flags
from ml_collections import config_flags

from moe_serve import cli
from moe_serve import config as config_lib
from moe_serve import loading
from moe_serve import provenance
from moe_serve.experiments import protocols

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve_default.py", "Serve config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/protocols", "Output directory.")
_PROTOCOLS = flags.DEFINE_list("protocols", list(protocols.PROTOCOLS),
                               f"Subset of {','.join(protocols.PROTOCOLS)}.")
_SETTINGS = flags.DEFINE_list("settings", [s.name for s in protocols.SETTINGS],
                              "Subset of " + ",".join(s.name for s in protocols.SETTINGS) + ".")
_D = protocols.Sizes()
_TRIALS = flags.DEFINE_integer("trials", _D.trials, "needle, mixed, prefix: batches per protocol.",
                               lower_bound=1)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", [str(b) for b in _D.batch_sizes],
                                 "single's batch sizes; needle and mixed draw up to the largest.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", _D.num_prompts,
                                    "bitwise, mixed, prefix: distinct prompts.", lower_bound=1)
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", _D.max_new_tokens, "Tokens per request.",
                                lower_bound=1)
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_len", _D.max_prompt_len, "Prompt tokens, at most.",
                                   lower_bound=2)
_TEMPERATURE = flags.DEFINE_float("temperature", _D.temperature, "bitwise's temperature (> 0).")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Prompt and composition draws.")


def main(argv):
  del argv
  cfg = loading.resolve_for(_CONFIG.value, "serve")  # params_dir's model
  by_name = {s.name: s for s in protocols.SETTINGS}
  bad = [s for s in _SETTINGS.value if s not in by_name]
  if bad:
    raise config_lib.ConfigError(f"--settings: unknown {bad}; have {sorted(by_name)}")
  sizes = protocols.Sizes(trials=_TRIALS.value,
                          batch_sizes=tuple(int(b) for b in _BATCH_SIZES.value),
                          num_prompts=_NUM_PROMPTS.value, max_new_tokens=_MAX_NEW.value,
                          max_prompt_len=_MAX_PROMPT.value, temperature=_TEMPERATURE.value,
                          seed=_SEED.value)
  if min(sizes.batch_sizes) < 1 or max(sizes.batch_sizes) > cfg.serve.max_num_seqs:
    raise config_lib.ConfigError(f"--batch_sizes={list(sizes.batch_sizes)} must be in "
                                 f"1..serve.max_num_seqs={cfg.serve.max_num_seqs}")
  if sizes.max_prompt_len + sizes.max_new_tokens > cfg.model.max_len:
    raise config_lib.ConfigError(f"--max_prompt_len + --max_new_tokens exceeds model.max_len="
                                 f"{cfg.model.max_len}")
  if not sizes.temperature > 0:
    raise config_lib.ConfigError("--temperature must be > 0 (bitwise samples with seeds)")
  params, source = loading.load(cfg)
  rows = protocols.run_protocols(cfg, params, loading.tokenizer(cfg), _PROTOCOLS.value,
                                 [by_name[s] for s in _SETTINGS.value], sizes)
  stamp = provenance.provenance(cfg)
  header = [f"command: {' '.join(sys.argv)}",
            f"params: {source}; commit {stamp['git_commit']}"
            f"{' (dirty)' if stamp.get('git_dirty') else ''}; {stamp['started']}",
            f"machine: {provenance.cpu_name()}, {stamp['backend']} x{stamp['device_count']}, "
            f"jax {stamp['jax']}"]
  print("\n" + protocols.write(_WORKDIR.value, rows, header,
                               dict(provenance=stamp, params=source, sizes=sizes._asdict())))


if __name__ == "__main__":
  cli.run(main)
