"""Scheduler decisions worked by hand: who is preempted, who gets a prefill row, the sjf order.

The scheduler is driven directly (no model): after each plan the test advances the sequences as
the engine would, with a dummy output token.
"""
from configs import serve_default
from moe_serve import config as config_lib
from moe_serve.serving.loop import scheduler as scheduler_lib
from moe_serve.serving.stream.request import Request


def _sched(**serve):
  cfg = serve_default.get_config("size=tiny")
  cfg.serve.update(policy="fcfs", batching="continuous", **serve)
  config_lib.validate_serve(cfg)
  return scheduler_lib.Scheduler(cfg.serve, max_prefill_rows=3, chunk_size=8)


def _run_plan(plan):
  """What the engine does with a plan's rows (serving/loop/engine.py), with token 5 as every
  output."""
  for seq in plan.decode:
    seq.advance_decode()
    seq.append_output(5, 0.0, 0.0)
  for seq, n in plan.prefill:
    if seq.advance_prefill(n):
      seq.append_output(5, 0.0, 0.0)


def _req(rid, prompt_len, arrival):
  return Request(id=rid, prompt=[1] * prompt_len, max_new_tokens=20, arrival=arrival,
                 domain="add")


def test_the_lowest_ranked_running_request_is_preempted():
  # Blocks of 2 tokens, 4 in all. Request 0 (4 prompt tokens) holds 2 blocks, 1 and 2 (1 token)
  # one each: all 4 are taken after the first step. Next step request 0 feeds position 4 and
  # needs a third block; 1 and 2 fit theirs (position 1: 2 tokens, 1 block).
  sched = _sched(max_num_seqs=3, kv_block_size=2, kv_num_blocks=4, max_num_batched_tokens=11)
  seqs = [sched.add(_req(i, n, 0.001 * i)) for i, n in enumerate([4, 1, 1])]
  first = sched.schedule(0.0)
  assert first.admitted == seqs and [n for _, n in first.prefill] == [4, 1, 1]
  _run_plan(first)
  assert sched.free_blocks == 0
  second = sched.schedule(0.1)
  # The victim is the lowest-ranked (last in fcfs order) of the others, not the next in line.
  assert second.preempted == [seqs[2]] and second.decode == seqs[:2]
  assert seqs[2].preemptions == 1 and seqs[2].slot == -1 and seqs[2].num_computed == 0
  assert sched.waiting == [seqs[2]] and not second.admitted  # no admission in a preempting step
  sched.check_invariants()


def test_prefill_rows_never_overtake_in_policy_order():
  # Budget 11 tokens: request 0 takes a full chunk of 8; request 1's chunk (8) does not fit the 3
  # left, so request 2 (2 tokens, which would fit) waits too: a later request never takes an
  # earlier one's place.
  sched = _sched(max_num_seqs=3, kv_num_blocks=32, max_num_batched_tokens=11)
  seqs = [sched.add(_req(i, n, 0.001 * i)) for i, n in enumerate([8, 8, 2])]
  plan = sched.schedule(0.0)
  assert plan.admitted == seqs
  assert [(s.req.id, n) for s, n in plan.prefill] == [(0, 8)]


def test_sjf_ranks_by_prompt_plus_output_length():
  long_prompt_short_output = Request(id=0, prompt=[1] * 6, max_new_tokens=2, arrival=0.0)
  short_prompt_long_output = Request(id=1, prompt=[1] * 3, max_new_tokens=9, arrival=0.0)
  key = lambda r: scheduler_lib.policy_key(r, "sjf")
  assert key(long_prompt_short_output) < key(short_prompt_long_output)  # 8 < 12


def test_decode_rows_count_against_the_token_budget():
  # Budget 11: request 0 decodes (1 token), request 1 takes a full chunk of 8, leaving 2; request
  # 2's 3 prompt tokens would fit the 3 left if decode tokens were not counted.
  sched = _sched(max_num_seqs=3, kv_num_blocks=32, max_num_batched_tokens=11)
  first = sched.add(_req(0, 2, 0.0))
  _run_plan(sched.schedule(0.0))
  later = [sched.add(_req(i, n, 0.1)) for i, n in ((1, 8), (2, 3))]
  plan = sched.schedule(0.1)
  assert plan.decode == [first] and plan.admitted == later
  assert [(s.req.id, n) for s, n in plan.prefill] == [(1, 8)]
