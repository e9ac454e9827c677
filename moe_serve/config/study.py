"""The `study` section of a determinism-study config (configs/study_default.py)."""
from moe_serve.config.checks import ConfigError, choice, finite, positive
from moe_serve.config.serve import validate_serve

STUDY_MODES = ("traffic", "composition", "prefix")
CO_DOMAINS = ("same", "mixed")
STUDY_ARMS = ("routing", "numerical")
STUDY_REPLAY = ("none", "solo")


def validate_study(cfg):
  """Checks a determinism-study config (configs/study_default.py): its serving sections and
  `study`. `study.capacity_factor` / `study.load`, when not None, replace the router's prefill
  and decode factors / the workload's arrival rate (one sweep axis for each)."""
  st = cfg.study
  choice(st.mode, "study.mode", STUDY_MODES)
  s = cfg.serve
  if st.mode == "prefix" and (not s.get("prefix_cache", False) or s.prompt_logprobs):
    raise ConfigError("study.mode=prefix measures what a cached prefix carries: set "
                      "serve.prefix_cache=true and serve.prompt_logprobs=false (quality NLL is "
                      "then scored by the step, not the engine)")
  validate_serve(cfg)
  choice(st.co_domains, "study.co_domains", CO_DOMAINS)
  choice(st.get("arm", "routing"), "study.arm", STUDY_ARMS)
  choice(st.get("replay", "none"), "study.replay", STUDY_REPLAY)
  positive(st, "study", "repeats", "targets_per_domain", "max_new_tokens", "co_max_new_tokens")
  for name in ("co_requests", "quality_per_domain", "seed"):
    if not isinstance(st[name], int) or st[name] < 0:
      raise ConfigError(f"study.{name}={st[name]!r} must be an integer >= 0")
  for name in ("capacity_factor", "load"):
    if st[name] is not None:
      finite(st[name], f"study.{name}", strict=True)
  finite(st.inject_after_s, "study.inject_after_s")
  finite(st.inject_window_s, "study.inject_window_s")
  unknown = sorted(set(st.target_domains) - set(cfg.serve.domains))
  if not st.target_domains or unknown:
    raise ConfigError(f"study.target_domains={tuple(st.target_domains)} must be a non-empty list "
                      f"of serve.domains={list(cfg.serve.domains)}; unknown: {unknown}")
  return cfg
