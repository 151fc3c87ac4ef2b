"""The training loop end to end on the tiny MQAR config: outputs, resume, and every failure mode.

`tiny_config`, `losses`, `interrupt_after` and `assert_resumes_exactly` serve the other tasks'
loop tests too (tests/training/test_reward.py).
"""

import errno
import json
import os

import jax
import numpy as np
import pytest
from etils import epath

from configs import mqar
from lloglin.training import trainer
from lloglin.training.checkpoint import CheckpointSaveError, Checkpointer
from lloglin.training.metrics import read_metrics


def tiny_config(experiment=mqar, **train_overrides):
  """The `:tiny` variant of a configs/ module, logged every step, saved every 5 steps."""
  cfg = experiment.get_config("tiny")
  cfg.train.log_every = 1
  cfg.train.checkpoint_every = 5
  cfg.train.async_checkpointing = False
  for k, v in train_overrides.items():
    setattr(cfg.train, k, v)
  return cfg


def losses(workdir):
  return {r["step"]: r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if "loss" in r}


def test_run_writes_metrics_tensorboard_checkpoints_and_export(tmp_path):
  cfg = tiny_config(num_steps=10)
  final = trainer.train(cfg, str(tmp_path))
  assert np.isfinite(final["loss"]) and 0 <= final["eval_accuracy"] <= 1
  assert sorted(losses(tmp_path)) == list(range(1, 11))
  assert os.listdir(tmp_path / "tensorboard")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "5"]
  assert os.path.exists(tmp_path / "export" / "config.json")
  saved = json.load(open(tmp_path / "export" / "config.json"))
  assert saved["model"]["vocab_size"] > 0 and saved["data"]["source"] == "mqar"


class _Interrupt(Exception):
  pass


def interrupt_after(monkeypatch, num_calls):
  """Makes the train step raise after `num_calls` steps, like a kill between checkpoints."""
  real = trainer.make_program

  def make(*args, **kwargs):
    program, calls = real(*args, **kwargs), [0]

    def step(state, batch):
      calls[0] += 1
      if calls[0] > num_calls:
        raise _Interrupt()
      return program.train_step(state, batch)

    return program._replace(train_step=step)

  monkeypatch.setattr(trainer, "make_program", make)


def assert_resumes_exactly(cfg, straight, workdir, monkeypatch, stop_after: int):
  """Runs `cfg` in `workdir`, killed after `stop_after` steps, then again (which resumes): every
  logged metric but the timing equals that of the uninterrupted run in `straight`."""
  with monkeypatch.context() as m:
    interrupt_after(m, stop_after)
    with pytest.raises(_Interrupt):
      trainer.train(cfg, str(workdir))
  assert max(losses(workdir)) == stop_after
  trainer.train(cfg, str(workdir))  # the same command again resumes from the last checkpoint

  def records(path):
    return [{k: v for k, v in r.items() if k != "tokens_per_second"}
            for r in read_metrics(os.path.join(path, "metrics.jsonl"))]

  assert sorted(losses(workdir)) == list(range(1, cfg.train.num_steps + 1))
  assert records(workdir) == records(straight)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch):
  cfg = tiny_config(num_steps=20)
  trainer.train(cfg, str(tmp_path / "straight"))
  assert_resumes_exactly(cfg, tmp_path / "straight", tmp_path / "resumed", monkeypatch, 13)


def _poison_batches_from(monkeypatch, step):
  """From the `step`-th training batch on, the loss mask is NaN (so the loss is NaN)."""
  real = trainer.make_datasets

  def make(cfg):
    train_ds, val_ds = real(cfg)
    real_next, count = train_ds.__class__.__next__, [0]

    class Poisoned(train_ds.__class__):
      def __next__(self):
        batch = real_next(self)
        count[0] += 1
        if count[0] >= step:
          batch = dict(batch, loss_mask=np.full_like(batch["loss_mask"], np.nan))
        return batch

    train_ds.__class__ = Poisoned
    return train_ds, val_ds

  monkeypatch.setattr(trainer, "make_datasets", make)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  cfg = tiny_config(num_steps=20)
  _poison_batches_from(monkeypatch, 8)
  with pytest.raises(trainer.NonFiniteLossError, match="at step 8"):
    trainer.train(cfg, str(tmp_path))
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  assert ckpt.steps() == [5]
  ckpt.close()
  monkeypatch.undo()
  final = trainer.train(tiny_config(num_steps=6), str(tmp_path))  # resumes from the good one
  assert np.isfinite(final["loss"])


def _corrupt(step_dir):
  for root, _, files in os.walk(step_dir / "state"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  trainer.train(tiny_config(num_steps=10), str(tmp_path))
  _corrupt(tmp_path / "checkpoints" / "10")
  trainer.train(tiny_config(num_steps=12), str(tmp_path))
  assert "step 10" in caplog.text and "cannot be read" in caplog.text
  assert sorted(losses(tmp_path)) == list(range(1, 13))


@pytest.mark.parametrize("async_save", [False, True])
def test_disk_full_while_saving_keeps_earlier_checkpoints(tmp_path, monkeypatch, async_save):
  """The file system fills up while orbax writes step 10: earlier checkpoints stay readable."""
  path_type = type(epath.Path(tmp_path))
  real_write = path_type.write_text

  def write_text(self, *args, **kwargs):
    if f"checkpoints{os.sep}10" in str(self):
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(self, *args, **kwargs)

  monkeypatch.setattr(path_type, "write_text", write_text)
  with pytest.raises(CheckpointSaveError,
                     match=r"disk full while saving a checkpoint.*steps \[5\]"):
    trainer.train(tiny_config(num_steps=12, async_checkpointing=async_save), str(tmp_path))
  monkeypatch.undo()
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  assert ckpt.steps() == [5]
  step, state, _, _ = ckpt.restore_latest(_saved_state_like(ckpt))
  assert step == 5 and all(np.isfinite(x).all() for x in jax.tree.leaves(state))
  ckpt.close()


def _saved_state_like(ckpt):
  """The saved state's own structure (restore without rebuilding the model)."""
  return ckpt.manager.item_metadata(ckpt.steps()[-1])["state"]


def test_async_checkpointing_and_keep_best(tmp_path):
  cfg = tiny_config(num_steps=20, async_checkpointing=True, keep_checkpoints=1, keep_best=True,
                    eval_every=5)
  trainer.train(cfg, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  evals = {r["step"]: r["eval_loss"] for r in read_metrics(tmp_path / "metrics.jsonl")
           if "eval_loss" in r}
  best = min(evals, key=evals.get)
  assert steps == sorted({best, 20})


def test_vocab_smaller_than_data_is_refused(tmp_path):
  cfg = tiny_config(num_steps=2)
  cfg.model.vocab_size = 3
  with pytest.raises(ValueError, match="model.vocab_size=3 is smaller"):
    trainer.train(cfg, str(tmp_path))
