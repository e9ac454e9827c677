"""The Hugging Face side of benchmarks/peer.py: a worker process that owns torch.

Started by peer.py with the interpreter of `--peer_python` (a venv with torch + transformers, the
`peer` extra); it reads one JSON command per line on stdin and answers one JSON line on stdout:

  {"cmd": "build", "dir": D, "seed": S, "config": {...}}   builds a random MixtralForCausalLM,
      saves it (float32 safetensors) to D; answers the parameter count and the implementations
  {"cmd": "generate", "prompts": [[ids]], "batch": B, "new": N} greedy `generate` of exactly N
      tokens per prompt in batches of B; answers wall seconds and the generated ids
  {"cmd": "quit"}

Never imported by moe_serve or its tests.
"""
import json
import sys
import time

import torch
import transformers


def _build(msg):
  torch.manual_seed(msg["seed"])
  config = transformers.MixtralConfig(**msg["config"])
  model = transformers.MixtralForCausalLM(config).eval()
  model.save_pretrained(msg["dir"], safe_serialization=True)
  return dict(params=sum(p.numel() for p in model.parameters()),
              torch=torch.__version__, transformers=transformers.__version__,
              threads=torch.get_num_threads(),
              attn=getattr(model.config, "_attn_implementation", None),
              experts=getattr(model.config, "_experts_implementation", None)), model


def _generate(model, msg):
  ids = torch.tensor(msg["prompts"], dtype=torch.long)
  out, b, n = [], msg["batch"], msg["new"]
  t0 = time.perf_counter()
  with torch.inference_mode():
    for i in range(0, len(ids), b):
      chunk = ids[i:i + b]
      gen = model.generate(chunk, attention_mask=torch.ones_like(chunk), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=0)
      out += gen[:, chunk.shape[1]:].tolist()
  return dict(wall_s=time.perf_counter() - t0, tokens=out)


def main():
  model = None
  for line in sys.stdin:
    msg = json.loads(line)
    if msg["cmd"] == "quit":
      break
    if msg["cmd"] == "build":
      answer, model = _build(msg)
    else:
      answer = _generate(model, msg)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
  main()
