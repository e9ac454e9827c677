"""The README's demo runs end to end on the tiny config and reports honest figures."""
import os

import pytest

from configs import generate_default, tiny
from moe_serve import bundled, loading
from moe_serve import config as config_lib
from moe_serve.data import eval_prompts, tokenizer
from moe_serve.experiments import generate_demo
from moe_serve.metrics import quality


def test_demo_runs_and_reports(capsys):
  figures = generate_demo.run(tiny.get_config())
  out = capsys.readouterr().out
  assert "parameters:" in out and "decode" in out and "'12+34=' ->" in out
  assert figures["params_total"] > figures["params_active"] > 0
  assert figures["decode_tok_s"] > 0 and figures["prefill_tok_s"] > 0


def test_eval_prompt_set_is_the_first_prompt_of_each_domain():
  first = {}
  for ex in eval_prompts.load():
    first.setdefault(ex.domain, ex.prompt)
  assert generate_demo.prompt_texts("eval") == list(first.values())
  assert len(first) == 6 and generate_demo.prompt_texts("demo") == list(generate_demo.DEMO_PROMPTS)
  with pytest.raises(config_lib.ConfigError, match="generate.prompts='random'"):
    generate_demo.prompt_texts("random")


def test_printed_text_stops_at_the_first_eos():
  """generate_demo prints quality.completion_text: the text before the first EOS."""
  eos, tok = tokenizer.BYTES.eos_id, tokenizer.BYTES
  assert quality.completion_text([70, 71, eos, 72, eos], tok)[0] == tok.decode([70, 71])
  assert quality.completion_text([70, 71], tok)[0] == tok.decode([70, 71])


def test_default_generate_config_is_the_bundled_model():
  cfg = generate_default.get_config()
  assert os.path.samefile(cfg.params_dir, bundled.DEFAULT_DIR) and cfg.generate.prompts == "eval"
  cfg = loading.resolve(config_lib.validate(cfg), log=lambda *_: None)
  trained = bundled.load_model_config()
  for key in ("d_model", "num_layers", "num_experts", "d_ff_expert", "vocab_size"):
    assert cfg.model[key] == trained[key], key
