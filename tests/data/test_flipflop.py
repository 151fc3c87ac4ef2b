"""Tests for lloglin/data/flipflop.py: the flip-flop language and its rows."""

import numpy as np
import pytest

from lloglin.data import make_dataset
from lloglin.data.flipflop import BIT0, BIT1, BOS, I, R, VOCAB_SIZE, W

SEQ_LEN = 64


def _flipflop_cfg(data_cfg, **overrides):
  data_cfg.source = "flipflop"
  data_cfg.flipflop.update({"num_train_examples": 500, "num_val_examples": 100, **overrides})
  return data_cfg


def _batch(data_cfg, split="train", batch_size=200, seq_len=SEQ_LEN, seed=0):
  ds = make_dataset(data_cfg, split=split, seq_len=seq_len, batch_size=batch_size, seed=seed)
  assert ds.vocab_size == VOCAB_SIZE and ds.tokenizer is None
  return next(ds)


def _replay(string):
  """The read answers of a string, by running the one-bit memory."""
  memory, answers = None, []
  for op, bit in zip(string[0::2], string[1::2]):
    if op == W:
      memory = bit
    elif op == R:
      answers.append(memory)
  return answers


def test_rows_are_valid_flip_flop_strings(data_cfg):
  batch = _batch(_flipflop_cfg(data_cfg))
  for inputs, targets, mask in zip(batch["inputs"], batch["targets"], batch["loss_mask"]):
    row = np.concatenate([inputs, targets[-1:]])
    np.testing.assert_array_equal(targets[:-1], inputs[1:])
    assert row[0] == BOS and (row[1:] != BOS).all()
    ops, bits = row[1::2], row[2::2]
    assert set(ops) <= {W, R, I} and set(bits) <= {BIT0, BIT1}
    assert ops[0] == W and ops[-1] == R
    reads = np.flatnonzero(inputs == R)
    np.testing.assert_array_equal(np.flatnonzero(mask), reads)
    assert list(targets[reads]) == _replay(row[1:])  # every read answer is the latest write
  assert (batch["segment_ids"] == 1).all()
  assert (batch["positions"] == np.arange(SEQ_LEN)).all()


@pytest.mark.parametrize("p", [0.1, 0.8, 0.98])
def test_instruction_frequencies_follow_p_ignore(data_cfg, p):
  batch = _batch(_flipflop_cfg(data_cfg, val_p_ignore=p), split="validation", batch_size=100,
                 seq_len=512)
  rows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
  ops, bits = rows[:, 1::2], rows[:, 2::2]
  drawn = ops[:, 1:-1]  # the instructions drawn at random
  assert abs((drawn == I).mean() - p) < 0.02
  assert abs((drawn == W).mean() - (drawn == R).mean()) < 0.02
  bits = bits[ops != R]
  assert abs((bits == BIT1).mean() - 0.5) < 0.02


def test_splits_and_seeds_differ_and_examples_are_reproducible(data_cfg):
  cfg = _flipflop_cfg(data_cfg)
  train, val = _batch(cfg)["inputs"], _batch(cfg, split="validation", batch_size=100)["inputs"]
  assert not np.array_equal(train[:100], val)
  np.testing.assert_array_equal(_batch(cfg, split="validation", batch_size=100)["inputs"], val)
  assert not np.array_equal(_batch(cfg, split="validation", batch_size=100, seed=1)["inputs"], val)


def test_bad_settings_raise(data_cfg):
  with pytest.raises(ValueError, match="seq_len=63"):
    _batch(_flipflop_cfg(data_cfg), seq_len=63)
  with pytest.raises(ValueError, match="val_p_ignore=1.0"):
    _batch(_flipflop_cfg(data_cfg, val_p_ignore=1.0), split="validation")
