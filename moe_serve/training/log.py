"""Training's view of its metrics: the held-out curve table (writing is metrics/writers.py)."""


def curve_table(records, domains):
  """Markdown table of held-out NLL per domain at every eval record (the training curve)."""
  evals = [r for r in records if r.get("kind") == "eval"]
  lines = ["| step | elapsed s | " + " | ".join(domains) + " |",
           "|---:|---:|" + "---:|" * len(domains)]
  for r in evals:
    cells = " | ".join(f"{r['heldout_nll'][d]:.3f}" for d in domains)
    lines.append(f"| {r['step']} | {r['elapsed_s']:.0f} | {cells} |")
  return "\n".join(lines)
