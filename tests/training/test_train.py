"""Training on the tiny config: the loss goes down, and an interrupted run resumes bitwise."""
import jax
import numpy as np
import pytest

from configs import train_default
from moe_serve.data import batches, corpus
from moe_serve.metrics import writers
from moe_serve.training import optim, trainer


def _tiny():
  return train_default.get_config("size=tiny")


def test_steps_lower_the_loss():
  cfg = _tiny()
  cfg.train.update(steps=20, warmup_steps=1, lr=1e-2)
  optimizer = optim.make_optimizer(cfg.train)
  state = trainer.init_state(cfg, optimizer)
  step = trainer.make_train_step(cfg.model, optimizer)
  batch = batches.train_batch(corpus.Corpus(0), cfg.data, 0)
  losses = []
  for _ in range(12):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.7 * losses[0], losses
  assert metrics["expert_load"].shape == (cfg.model.num_layers, cfg.model.num_experts)
  assert int(state["step"]) == 12


def test_kill_and_resume_is_bitwise(tmp_path):
  cfg = _tiny()  # 6 steps, checkpoint every 2
  full, _ = trainer.train(cfg, str(tmp_path / "full"), log=lambda *_: None)
  with pytest.raises(trainer.Interrupted):
    trainer.train(cfg, str(tmp_path / "cut"), stop_after=3, log=lambda *_: None)  # last ckpt: 2
  resumed, summary = trainer.train(cfg, str(tmp_path / "cut"), log=lambda *_: None)
  assert summary["steps"] == cfg.train.steps
  flat_full = jax.tree_util.tree_leaves_with_path(full)
  flat_resumed = jax.tree.leaves(resumed)
  assert len(flat_full) == len(flat_resumed)
  for (path, a), b in zip(flat_full, flat_resumed):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  # The resumed run really did restart from step 2, not from scratch.
  records = writers.MetricsLog(str(tmp_path / "cut")).read()
  starts = [r["step"] for r in records if r["kind"] == "run_start"]
  assert starts == [0, 2]
  assert records[0]["corpus_hash"] and records[0]["python"]


@pytest.mark.parametrize("stop", [3, 4])  # 4 is also a regular checkpoint step (every 2)
def test_stop_step_ends_early_with_the_same_schedule(tmp_path, stop):
  cfg = _tiny()
  cfg.train.stop_step = stop
  state, summary = trainer.train(cfg, str(tmp_path), log=lambda *_: None)
  assert summary["steps"] == stop and int(state["step"]) == stop
  lrs = [r["lr"] for r in writers.MetricsLog(str(tmp_path)).read()
         if r["kind"] == "train"]
  # logged every 2 steps: at step s, the lr of step index s - 1 of the full 6-step schedule
  assert lrs == [float(optim.schedule(cfg.train)(s - 1)) for s in range(2, stop + 1, 2)]
