"""Config parsing and validation: the one place that decides whether a config is usable.

Every check raises `ConfigError` naming the field, the bad value and what would be valid, and runs
before anything is compiled. Other modules add their checks here, not at their call sites.

One module per section, each with its option lists (the tuples other modules import from here):
  checks.py    ConfigError and the small checks the sections are made of
  args.py      `get_config(arg)` strings (parse_arg) and `--config.x.y` names (unknown_field)
  model.py     model: DTYPES, QK_NORMS, MODEL_OPTION_DEFAULTS, with_model_defaults
  router.py    model.router: ROUTER_KINDS, DISPATCH_BACKENDS, ROUTER_OPTION_DEFAULTS, ...
  architecture.py  the newer families' model options (MLA, sinks, windows, rope scaling, expert
               activation and biases, dense first layers): ARCH_OPTION_DEFAULTS, ...
  mesh.py      mesh: MESH_AXES; the mesh against the model, the devices, the serving rows
  serve.py     serve (buckets, prefix cache): SERVE_POLICIES, ...; validate_serve adds clock and
               workload
  clock.py     clock: CLOCK_MODES
  workload.py  workload: ARRIVAL_KINDS, LENGTH_KINDS, PROMPT_SOURCES, TRACE_FORMATS
  study.py     study: STUDY_MODES, CO_DOMAINS, STUDY_ARMS, STUDY_REPLAY
  train.py     data and train
  kinds.py     validate (model and mesh) and validate_for(cfg, kind)

Callers check a config with `validate_for(cfg, kind)`, kind one of KINDS (generate, train, serve,
calibrate, eval, sweep), never with a chain of section checks of their own. A config that names a
`params_dir` takes its model's architecture from that directory, which config/ does not read
(it sits below loading.py and imports nothing above it): scripts and library entry points that
load parameters call `loading.resolve_for(cfg, kind)` instead, which runs validate_for (a bad
override is named before the directory is read), takes the architecture from the directory and
runs validate_for again on the result.
"""
from moe_serve.config.architecture import (ARCH_OPTION_DEFAULTS, ATTENTION_KINDS, EXPERT_ACTS,
                                           LAYER_TYPES, ROPE_TYPES, is_sliding_layer)
from moe_serve.config.args import parse_arg, unknown_field
from moe_serve.config.checks import ConfigError
from moe_serve.config.clock import CLOCK_MODES, validate_clock
from moe_serve.config.kinds import KINDS, validate, validate_for
from moe_serve.config.mesh import MESH_AXES, validate_mesh, validate_serve_mesh
from moe_serve.config.model import (DTYPES, MODEL_OPTION_DEFAULTS, QK_NORMS, validate_model,
                                    with_model_defaults)
from moe_serve.config.router import (CAPACITY_SCOPES, DISPATCH_BACKENDS, GROUP_SCORES, PRIORITIES,
                                     ROUTER_KINDS, ROUTER_OPTION_DEFAULTS, ROUTER_SCORES,
                                     validate_router, validate_routing_rules)
from moe_serve.config.serve import MAX_SHAPE_BUCKETS, SERVE_BATCHING, SERVE_POLICIES, validate_serve
from moe_serve.config.study import (CO_DOMAINS, STUDY_ARMS, STUDY_MODES, STUDY_REPLAY,
                                    validate_study)
from moe_serve.config.train import validate_train
from moe_serve.config.workload import (ARRIVAL_KINDS, LENGTH_KINDS, PROMPT_SOURCES, TRACE_FORMATS,
                                       validate_workload)
