"""The training loop: jitted AdamW step, per-step JSONL metrics, held-out NLL, resumable checkpoints.

Resuming is exact: the batch of step s is a pure function of (data seed, s), the state holds the
step counter, and a checkpoint holds params + optimizer state, so a run killed after a checkpoint
and resumed gives bitwise the parameters of an uninterrupted run (on CPU; tested).
"""
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moe_serve import checkpoint
from moe_serve import config as config_lib
from moe_serve.data import batches as batches_lib
from moe_serve.data import corpus as corpus_lib
from moe_serve.metrics import writers
from moe_serve.model import api
from moe_serve.training import losses, optim


def init_state(cfg, optimizer):
  """{"params", "opt_state", "step"} from the config's seed."""
  params = api.init_params(cfg.model, jax.random.key(cfg.seed))
  return {"params": params, "opt_state": optimizer.init(params),
          "step": jnp.zeros((), jnp.int32)}


def make_train_step(model_cfg, optimizer, state_shardings=None, batch_shardings=None):
  """jit((state, batch) -> (state, metrics)), state donated; shardings are passed through to jit.

  The one place the train step is compiled: a sharded trainer passes the shardings built by
  moe_serve/parallel instead of writing another step.
  """
  def train_step(state, batch):
    grad_fn = jax.value_and_grad(functools.partial(losses.loss_fn, model_cfg), has_aux=True)
    (_, metrics), grads = grad_fn(state["params"], batch)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  kwargs = {}
  if state_shardings is not None:
    kwargs = dict(in_shardings=(state_shardings, batch_shardings),
                  out_shardings=(state_shardings, None))
  return jax.jit(train_step, donate_argnums=(0,), **kwargs)


def make_eval_step(model_cfg):
  """jit((params, batch) -> (nll sum, weight sum) per domain)."""
  def eval_step(params, batch):
    _, metrics = losses.loss_fn(model_cfg, params, batch)
    return metrics["domain_nll_sum"], metrics["domain_weight"]
  return jax.jit(eval_step)


_STEPS_CACHE = {}


def _steps(cfg):
  """(train step, eval step) for this model + train config, compiled once per process."""
  key = (cfg.model.to_json(), cfg.train.to_json())
  if key not in _STEPS_CACHE:
    _STEPS_CACHE[key] = (make_train_step(cfg.model, optim.make_optimizer(cfg.train)),
                         make_eval_step(cfg.model))
  return _STEPS_CACHE[key]


def heldout_batches(corpus, cfg):
  """Fixed held-out batches (every domain), packed like training batches."""
  examples = []
  for domain in corpus_lib.DOMAINS:
    examples += corpus.heldout(domain, cfg.train.eval_examples_per_domain)
  # Rows of model.max_len: a held-out text example (prompt + continuation) may exceed seq_len.
  return batches_lib.eval_batches(examples, cfg.data.batch_size, cfg.model.max_len)


def evaluate_nll(eval_step, params, batches):
  """Held-out NLL per domain (nats per loss token): task answers, text continuations."""
  nll_K = np.zeros(len(corpus_lib.DOMAINS))
  weight_K = np.zeros(len(corpus_lib.DOMAINS))
  for batch in batches:
    s, w = eval_step(params, batch)
    nll_K += np.asarray(s)
    weight_K += np.asarray(w)
  return {d: float(nll_K[i] / max(weight_K[i], 1.0)) for i, d in enumerate(corpus_lib.DOMAINS)}


def _domain_losses(metrics):
  s, w = np.asarray(metrics["domain_nll_sum"]), np.asarray(metrics["domain_weight"])
  return {d: float(s[i] / w[i]) for i, d in enumerate(corpus_lib.DOMAINS) if w[i] > 0}


class Interrupted(RuntimeError):
  """Raised by `train(..., stop_after=n)`: simulates a run killed after step n."""


def train(cfg, workdir, log=print, stop_after=None, progress=False):
  """Trains (or resumes) in `workdir`; returns (final state, summary dict).

  `stop_after` raises `Interrupted` once that many steps are done (a simulated kill, for tests).
  """
  config_lib.validate_for(cfg, "train")
  t_cfg = cfg.train
  corpus = corpus_lib.Corpus(cfg.data.seed)
  optimizer = optim.make_optimizer(t_cfg)
  lr_fn = optim.schedule(t_cfg)
  writer = writers.MetricsLog(workdir, tensorboard=t_cfg.tensorboard)
  if writer.cut_bytes:
    log(f"{writer.path}: cut a partial last line ({writer.cut_bytes} bytes) left by an "
        "interrupted run")
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), max_to_keep=2)

  # --- state: fresh or resumed --------------------------------------------------------------
  # Committed to one device, as restored arrays are: a fresh and a resumed run then pass the train
  # step the same argument placement, so it compiles one program, not one each.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if mngr.latest_step() is None:
    state = jax.device_put(init_state(cfg, optimizer), device)
  else:  # shapes only: no throwaway init
    abstract = jax.eval_shape(functools.partial(init_state, cfg, optimizer))
    state = checkpoint.restore(
        mngr, checkpoint.abstract_like(abstract, jax.tree.map(lambda _: device, abstract)))
    log(f"resumed from {mngr.directory} at step {int(state['step'])}")
  start = int(state["step"])
  writer.write({"kind": "run_start", "step": start, "jax": jax.__version__,
                "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
                "config": cfg.to_dict(), **corpus.info()})
  log(f"corpus {corpus.info()['corpus_hash']} on python {sys.version.split()[0]}; "
      f"steps {start}..{t_cfg.steps}")

  train_step, eval_step = _steps(cfg)
  eval_batches = heldout_batches(corpus, cfg)

  # --- loop ---------------------------------------------------------------------------------
  bar = None
  if progress:
    import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm.tqdm(total=t_cfg.steps, initial=start, dynamic_ncols=True)
  t_start = t_window = time.perf_counter()
  window_tokens, heldout = 0, None
  for step in range(start, t_cfg.steps):
    batch = batches_lib.train_batch(corpus, cfg.data, step)
    window_tokens += int((batch.segment_ids_BxL >= 0).sum())
    state, metrics = train_step(state, batch)
    done = step + 1
    last = done == t_cfg.steps
    if done % t_cfg.log_every == 0 or last:
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      record = {"kind": "train", "step": done, "lr": float(lr_fn(step)),
                "tokens_per_s": window_tokens / (now - t_window),
                "elapsed_s": now - t_start, "domain_loss": _domain_losses(metrics),
                **{k: v for k, v in metrics.items() if not k.startswith("domain_")}}
      writer.write(record)
      t_window, window_tokens = now, 0
      if bar is not None:
        bar.set_postfix(loss=f"{float(metrics['loss']):.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
    if done % t_cfg.eval_every == 0 or last:
      heldout = evaluate_nll(eval_step, state["params"], eval_batches)
      writer.write({"kind": "eval", "step": done, "heldout_nll": heldout,
                    "elapsed_s": time.perf_counter() - t_start})
      log(f"step {done}: held-out NLL " + " ".join(f"{d}={v:.3f}" for d, v in heldout.items()))
    saved = done % t_cfg.checkpoint_every == 0 or last
    if saved:
      checkpoint.save(mngr, done, state)
    if bar is not None:
      bar.update(1)
    if stop_after is not None and done >= stop_after:
      raise Interrupted(f"stopped after step {done} (stop_after={stop_after})")
    if done == t_cfg.get("stop_step", 0) and not last:  # ends early, schedule unchanged
      if not saved:  # Orbax refuses to write a step twice, even forced
        checkpoint.save(mngr, done, state, force=True)
      writer.write({"kind": "stop_step", "step": done})
      break
    if time.perf_counter() - t_start > t_cfg.max_wall_minutes * 60 and not last:
      if not saved:
        checkpoint.save(mngr, done, state, force=True)
      log(f"wall-time limit {t_cfg.max_wall_minutes} min reached at step {done}; saved")
      writer.write({"kind": "wall_limit", "step": done})
      break
  if bar is not None:
    bar.close()
  summary = {"steps": int(state["step"]), "wall_s": time.perf_counter() - t_start,
             "heldout_nll": heldout, **corpus.info()}
  writer.write({"kind": "run_end", **summary})
  return state, summary
