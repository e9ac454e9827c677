"""Planning a node: the largest model that fits a per-device budget (parallel/memory.py).

Planned bytes are checked against live shards in tests/serving/test_sharded_engine.py; here the
planner's answers are checked against the planner's own exact figures for the answer and the
next size up (shapes only, nothing is compiled).
"""
from moe_serve.parallel import memory

MESH = {"data": 2, "expert": 2, "tensor": 2}
SLOTS = 8


def test_largest_fitting_is_the_largest_that_fits(tiny_cfg):
  rules, m = tiny_cfg.logical_axis_rules, tiny_cfg.model
  m.num_experts = 8

  def _used(model_cfg, **override):
    model_cfg = model_cfg.copy_and_resolve_references()
    model_cfg.update(override)
    p = memory.planned(model_cfg, MESH, rules, SLOTS)
    return p["params_bytes_per_device"] + p["cache_bytes_per_device"]

  budget = 4 * _used(m)  # room for several times this model
  fit = memory.largest_fitting(m, MESH, rules, SLOTS, budget)
  assert fit["fits"] and fit["budget_bytes"] == budget
  layers, experts = fit["largest_num_layers"], fit["largest_num_experts"]
  assert layers > m.num_layers and layers % m.moe_every == 0
  assert _used(m, num_layers=layers) <= budget < _used(m, num_layers=layers + m.moe_every)
  assert experts > m.num_experts and experts % MESH["expert"] == 0
  assert _used(m, num_experts=experts) <= budget < _used(m, num_experts=experts + MESH["expert"])
  used = fit["params_bytes_per_device"] + fit["cache_bytes_per_device"]
  assert 4 * used == budget and fit["params_bytes_per_device"] < fit["params_bytes"]


def test_latent_cache_is_planned_whole_per_tensor_shard(tiny_cfg):
  rules, m = tiny_cfg.logical_axis_rules, tiny_cfg.model
  m.update(attention="mla", q_lora_rank=16, kv_lora_rank=24, qk_nope_head_dim=8,
           qk_rope_head_dim=8, v_head_dim=8)
  p = memory.planned(m, MESH, rules, SLOTS)
  per_layer = SLOTS * (24 + 8) * m.max_len * 4  # [S, 1, Hc+Hr, J] float32
  assert p["cache_bytes"] == m.num_layers * per_layer + SLOTS * 4  # + lengths [S] int32
  # Slots split over data (2); one latent head: whole on every tensor shard.
  assert p["cache_bytes_per_device"] == m.num_layers * per_layer // 2 + SLOTS // 2 * 4
