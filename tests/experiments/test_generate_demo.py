"""The README's demo runs end to end on the tiny config and reports honest figures."""
from configs import tiny
from moe_serve.experiments import generate_demo


def test_demo_runs_and_reports(capsys):
  figures = generate_demo.run(tiny.get_config())
  out = capsys.readouterr().out
  assert "parameters:" in out and "decode" in out and "'12+34=' ->" in out
  assert figures["params_total"] > figures["params_active"] > 0
  assert figures["decode_tok_s"] > 0 and figures["prefill_tok_s"] > 0
