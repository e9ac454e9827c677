r"""Peak host memory while importing an HF checkpoint (issue: near one copy of the parameters).

  python benchmarks/hf_load_memory.py --hidden=1024 --layers=4 --experts=8 --ffn=2048

Writes a random Mixtral-shaped HF directory (bf16 safetensors, sharded like real exports) into a
temporary folder with numpy, then imports it with `moe_serve.hf.load` in a fresh process on one
CPU device and reports that process's peak resident memory (ru_maxrss) before and after, against
the parameters' bytes. On CPU the "device" arrays live in host memory too, so one copy of the
parameters is the floor; the importer adds one parameter's host copy at a time on top.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

_HIDDEN = flags.DEFINE_integer("hidden", 1024, "hidden_size")
_LAYERS = flags.DEFINE_integer("layers", 4, "num_hidden_layers")
_EXPERTS = flags.DEFINE_integer("experts", 8, "num_local_experts")
_FFN = flags.DEFINE_integer("ffn", 2048, "intermediate_size (per expert)")
_VOCAB = flags.DEFINE_integer("vocab", 32000, "vocab_size")
_SHARD_MB = flags.DEFINE_integer("shard_mb", 100, "bytes per safetensors shard (MB)")


def write_model(directory, d, layers, experts, f, vocab, shard_bytes):
  """A random bf16 Mixtral checkpoint; returns its parameter bytes."""
  heads, kv, hd = 16, 4, d // 16
  config = dict(model_type="mixtral", architectures=["MixtralForCausalLM"], vocab_size=vocab,
                hidden_size=d, intermediate_size=f, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
                num_local_experts=experts, num_experts_per_tok=2, hidden_act="silu",
                max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=1e6,
                tie_word_embeddings=False, sliding_window=None, attention_dropout=0.0)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as fh:
    json.dump(config, fh)
  rng = np.random.default_rng(0)
  shapes = {"model.embed_tokens.weight": (vocab, d), "lm_head.weight": (vocab, d),
            "model.norm.weight": (d,)}
  for i in range(layers):
    p = f"model.layers.{i}"
    shapes.update({f"{p}.input_layernorm.weight": (d,), f"{p}.post_attention_layernorm.weight":
                   (d,), f"{p}.self_attn.q_proj.weight": (heads * hd, d),
                   f"{p}.self_attn.k_proj.weight": (kv * hd, d),
                   f"{p}.self_attn.v_proj.weight": (kv * hd, d),
                   f"{p}.self_attn.o_proj.weight": (d, heads * hd),
                   f"{p}.block_sparse_moe.gate.weight": (experts, d)})
    for e in range(experts):
      q = f"{p}.block_sparse_moe.experts.{e}"
      shapes.update({f"{q}.w1.weight": (f, d), f"{q}.w3.weight": (f, d), f"{q}.w2.weight": (d, f)})
  shards, current, size, total = [], {}, 0, 0
  for name, shape in shapes.items():
    x = (rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    if current and size + x.nbytes > shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = x
    size += x.nbytes
    total += x.nbytes
  shards.append(current)
  weight_map = {}
  for i, tensors in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(tensors, os.path.join(directory, fname), metadata={"format": "pt"})
    weight_map.update({k: fname for k in tensors})
  with open(os.path.join(directory, "model.safetensors.index.json"), "w",
            encoding="utf-8") as fh:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh)
  return total


_CHILD = r"""
import os, resource, sys, time, json
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax, numpy as np
from moe_serve import hf
jax.numpy.zeros(1).block_until_ready()
def rss():  # current resident set (bytes)
  return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
t0 = time.perf_counter()
cfg, params = hf.load(sys.argv[1])
jax.block_until_ready(params)
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak
held = rss()
nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
print(json.dumps(dict(before=before, after=after, held=held, params_bytes=nbytes,
                      seconds=seconds)))
"""


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as directory:
    t0 = time.perf_counter()
    total = write_model(directory, _HIDDEN.value, _LAYERS.value, _EXPERTS.value, _FFN.value,
                        _VOCAB.value, _SHARD_MB.value * 2**20)
    print(f"wrote {total / 2**20:.0f} MiB of bf16 tensors in {time.perf_counter() - t0:.1f} s")
    out = subprocess.run([sys.executable, "-c", _CHILD, directory], capture_output=True,
                         text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
  mib = lambda b: b / 2**20
  peak, held, nbytes = r["after"] - r["before"], r["held"] - r["before"], r["params_bytes"]
  largest = _largest(_HIDDEN.value, _EXPERTS.value, _FFN.value, _VOCAB.value)
  print(f"parameters {mib(nbytes):.0f} MiB (bf16) loaded in {r['seconds']:.1f} s; resident "
        f"memory above the process before loading: peak {mib(peak):.0f} MiB = "
        f"{peak / nbytes:.2f}x the parameters, {mib(held):.0f} MiB held after; largest "
        f"parameter {mib(largest):.0f} MiB")


def _largest(d, experts, f, vocab):
  return 2 * max(experts * d * f, vocab * d)


if __name__ == "__main__":
  app.run(main)
