"""The `mesh` section: its sizes against the model, the devices, and the serving rows."""
import math

from moe_serve.config.checks import ConfigError, divisors

MESH_AXES = ("data", "expert", "tensor")  # mesh axis order, outermost first


def validate_mesh(mesh_cfg, model_cfg, num_devices=None):
  """Checks `config.mesh` against the model (and the device count, if given).

  Returns the resolved sizes `(data, expert, tensor)` when `num_devices` is given (one `-1`
  takes the devices left over), else None. Sizes must divide what they shard: experts by
  `expert`; query heads, KV heads, FFN widths and the vocab by `tensor`.
  """
  sizes = [mesh_cfg[a] for a in MESH_AXES]
  for axis, value in zip(MESH_AXES, sizes):
    if not isinstance(value, int) or isinstance(value, bool) or not (value > 0 or value == -1):
      raise ConfigError(f"mesh.{axis}={value!r} must be a positive integer or -1 (fill the rest)")
  fills = [a for a, v in zip(MESH_AXES, sizes) if v == -1]
  if len(fills) > 1:
    raise ConfigError(f"mesh uses -1 for {len(fills)} axes {fills}; at most one axis may be -1")
  fixed = math.prod(v for v in sizes if v != -1)
  if num_devices is not None:
    if fixed > num_devices:
      raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices but only "
                        f"{num_devices} exist; shrink the mesh so its product is {num_devices}")
    if fills and num_devices % fixed:
      raise ConfigError(f"mesh fixed sizes multiply to {fixed}, which does not divide the "
                        f"{num_devices} devices, so mesh.{fills[0]}=-1 cannot fill the rest; "
                        f"use sizes whose product divides {num_devices}")
    if not fills and fixed != num_devices:
      raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {fixed} of {num_devices} "
                        f"devices; make the product {num_devices} or set one axis to -1")
    sizes = [num_devices // fixed if v == -1 else v for v in sizes]
  _, expert, tensor = sizes
  m = model_cfg
  checks = [(expert, "expert", "model.num_experts", m.num_experts)]
  checks += [(tensor, "tensor", f"model.{f}", m[f])
             for f in ("num_heads", "num_kv_heads", "d_ff", "d_ff_expert", "vocab_size")]
  if m.get("batch_invariant", False) and expert not in (1, -1):
    raise ConfigError(f"model.batch_invariant needs every expert on every device, but "
                      f"mesh.expert={expert}; use mesh.expert=1 (data or tensor may split)")
  for size, axis, field, value in checks:
    if size != -1 and value % size:
      raise ConfigError(f"{field}={value} is not divisible by mesh.{axis}={size}; use a "
                        f"mesh.{axis} in {divisors(value)} or change {field}")
  return tuple(sizes) if num_devices is not None else None


def validate_serve_mesh(cfg, data):
  """ConfigError unless every step row count (`serve.buckets`) and the slot count
  (`serve.max_num_seqs`) are multiples of the mesh's `data` size: step rows and cache slots are
  sharded over `data`. `data` is the resolved size (after a -1 is filled)."""
  s = cfg.serve
  rows = {f"serve.buckets.{k}": tuple(s.buckets[k]) for k in ("decode_rows", "prefill_rows")}
  rows["serve.max_num_seqs"] = (s.max_num_seqs,)
  for field, values in rows.items():
    bad = [v for v in values if v % data]
    if bad:
      raise ConfigError(f"{field}={values if len(values) > 1 else values[0]!r} has {bad} not "
                        f"divisible by mesh.data={data} (rows and slots are sharded over data); "
                        f"use multiples of {data} or a smaller mesh.data")
  return cfg
