"""Shared fixtures: the RewardBench-format fixture file and a tiny reward model trained on it."""

import fcntl
import os
import pathlib

import pytest

from tests.helpers import run_script

FIXTURE = pathlib.Path(__file__).parent / "rewardbench_fixture.jsonl"
# Bytes: the training rows (where the validation pairs, the last 4, fit whole) and the longest
# row the model scores.
SEQ_LEN, MAX_SEQ_LEN = 96, 128


@pytest.fixture(scope="session")
def tiny_reward_run(tmp_path_factory):
  """Workdir of a byte-level reward model (configs/reward.py:tiny, one layer, a few steps)
  trained by train.py on the fixture's pairs; one per test session (xdist workers share it)."""
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    shared = shared.parent  # the session's folder, above every worker's own
  work = shared / "rewordbench_reward_run"
  with open(shared / "rewordbench_reward_run.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (work / "export").is_dir():
      result = run_script(
          "train.py", "--config", "configs/reward.py:tiny", f"--workdir={work}",
          "--config.data.source=preference_jsonl", "--config.data.tokenizer=byte",
          f"--config.data.path={FIXTURE}", "--config.data.val_fraction=0.25",
          f"--config.seq_len={SEQ_LEN}", f"--config.model.max_seq_len={MAX_SEQ_LEN}",
          "--config.model.num_layers=1", "--config.batch_size=4", "--config.train.num_steps=4",
          "--config.train.eval_every=4", "--config.train.checkpoint_every=4")
      assert result.returncode == 0, result.stderr[-3000:]
  return work
