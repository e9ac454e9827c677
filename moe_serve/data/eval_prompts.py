"""The committed evaluation prompt set (JSONL), so experiments do not depend on the interpreter.

One JSON object per line: {"id", "domain", "prompt", "answer"}. Task lines are held-out task
prompts with their exact answers; prose/code lines are held-out prompts with a continuation to
score by NLL. Regenerate (only when the corpus changes on purpose) with
  python -m moe_serve.data.eval_prompts
"""
import json
import os

from moe_serve.data import corpus as corpus_lib

DEFAULT_PATH = os.path.join(os.path.dirname(__file__), "eval_prompts.jsonl")
TASKS_PER_DOMAIN = 200
TEXT_PER_DOMAIN = 32
EVAL_SEED = 1234  # distinct from training seeds; the split itself is hash-fixed anyway


def build(seed=EVAL_SEED, tasks_per_domain=TASKS_PER_DOMAIN, text_per_domain=TEXT_PER_DOMAIN):
  """The eval set as a list of dicts, drawn from the held-out split."""
  corpus = corpus_lib.Corpus(seed)
  rows = []
  for domain in corpus_lib.DOMAINS:
    n = tasks_per_domain if domain in corpus_lib.tasks.TASK_DOMAINS else text_per_domain
    for i, ex in enumerate(corpus.heldout(domain, n)):
      rows.append({"id": f"{domain}-{i:04d}", "domain": domain, "prompt": ex.prompt,
                   "answer": ex.answer})
  return rows


def write(path=DEFAULT_PATH, rows=None):
  rows = build() if rows is None else rows
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load(path=DEFAULT_PATH, domains=None, per_domain=None):
  """Eval examples (corpus.Example) from the JSONL, optionally the first `per_domain` of some."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"eval prompt set {path} is missing; regenerate it with "
                            "`python -m moe_serve.data.eval_prompts`")
  out, counts = [], {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      d = row["domain"]
      if domains is not None and d not in domains:
        continue
      if per_domain is not None and counts.get(d, 0) >= per_domain:
        continue
      counts[d] = counts.get(d, 0) + 1
      out.append(corpus_lib.Example(d, row["prompt"], row["answer"]))
  return out


if __name__ == "__main__":
  write()
  print(f"wrote {DEFAULT_PATH}")
