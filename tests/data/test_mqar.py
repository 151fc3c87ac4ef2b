"""Tests for lloglin/data/mqar.py against the Zoology definition of MQAR."""

import numpy as np
import pytest

from lloglin.data import make_dataset
from lloglin.data.mqar import MqarExamples

VOCAB, PAIRS, SEQ_LEN = 64, 4, 32


def _mqar_cfg(data_cfg, **overrides):
  data_cfg.source = "mqar"
  data_cfg.mqar.update({"vocab_size": VOCAB, "num_kv_pairs": PAIRS, "num_train_examples": 200,
                       "num_val_examples": 50, **overrides})
  return data_cfg


def _batch(data_cfg, split="train", batch_size=100, seq_len=SEQ_LEN, seed=0):
  ds = make_dataset(data_cfg, split=split, seq_len=seq_len, batch_size=batch_size, seed=seed)
  assert ds.vocab_size == VOCAB and ds.tokenizer is None
  return next(ds)


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_answers_are_the_values_of_the_queried_keys(data_cfg, random_non_queries):
  batch = _batch(_mqar_cfg(data_cfg, random_non_queries=random_non_queries))
  fillers = []
  for inputs, targets, mask in zip(batch["inputs"], batch["targets"], batch["loss_mask"]):
    keys, values = inputs[0:2 * PAIRS:2], inputs[1:2 * PAIRS:2]
    assert ((1 <= keys) & (keys < VOCAB // 2)).all() and len(set(keys)) == PAIRS
    assert ((VOCAB // 2 <= values) & (values < VOCAB)).all() and len(set(values)) == PAIRS
    query_pos = np.flatnonzero(mask)
    assert len(query_pos) == PAIRS  # every key is queried once
    assert sorted(inputs[query_pos]) == sorted(keys)
    assert ((query_pos >= 2 * PAIRS) & ((query_pos - 2 * PAIRS) % 2 == 0)).all()
    answers = dict(zip(keys, values))
    assert [answers[k] for k in inputs[query_pos]] == list(targets[query_pos])
    assert (targets[mask == 0] == 0).all()
    rest = np.ones(SEQ_LEN, bool)
    rest[:2 * PAIRS] = rest[query_pos] = False
    assert (inputs[rest] == 0).all() != random_non_queries
    fillers.extend(inputs[rest])
  if random_non_queries:  # uniform over the whole vocabulary
    assert len(set(fillers)) > VOCAB * 3 // 4
  np.testing.assert_array_equal(batch["segment_ids"], 1)
  np.testing.assert_array_equal(batch["positions"], np.broadcast_to(np.arange(SEQ_LEN), (100, 32)))
  assert {k: v.dtype for k, v in batch.items()} == {
      "inputs": np.int32, "targets": np.int32, "loss_mask": np.float32,
      "segment_ids": np.int32, "positions": np.int32}


def test_power_a_sets_the_query_gaps(data_cfg):
  """Small power_a puts the queries near the context; power_a = 1 spreads them uniformly."""
  def early_fraction(power_a):
    mask = _batch(_mqar_cfg(data_cfg, power_a=power_a), batch_size=200, seq_len=128)["loss_mask"]
    gaps = (np.nonzero(mask)[1] - 2 * PAIRS) // 2  # in [0, 60)
    return np.mean(gaps < 30)

  assert early_fraction(0.01) > 0.7
  assert 0.4 < early_fraction(1.0) < 0.6


def test_gaps_follow_zoologys_sampler(data_cfg):
  """Each gap is queried as often as under Zoology's np.random.choice(replace=False, p=p)."""
  num, seq_len, power_a = 4000, 48, 0.3
  examples = MqarExamples(_mqar_cfg(data_cfg, power_a=power_a).mqar, split="train",
                          seq_len=seq_len, seed=0)
  num_gaps = (seq_len - 2 * PAIRS) // 2
  ours = np.zeros(num_gaps)
  for i in range(num):
    ours[(np.flatnonzero(examples.example(i)[2]) - 2 * PAIRS) // 2] += 1
  p = power_a * np.arange(1, num_gaps + 1) ** (power_a - 1)
  rng = np.random.default_rng(0)
  zoology = np.zeros(num_gaps)
  for _ in range(num):
    zoology[rng.choice(num_gaps, PAIRS, replace=False, p=p / p.sum())] += 1
  np.testing.assert_allclose(ours / num, zoology / num, atol=0.05)


def test_examples_are_a_function_of_seed_split_and_index(data_cfg):
  cfg = _mqar_cfg(data_cfg)
  val = _batch(cfg, "validation", batch_size=50)
  examples = MqarExamples(cfg.mqar, split="validation", seq_len=SEQ_LEN, seed=0)
  for i in (0, 17, 49):
    for key, value in zip(("inputs", "targets", "loss_mask"), examples.example(i)):
      np.testing.assert_array_equal(val[key][i], value)
  train = MqarExamples(cfg.mqar, split="train", seq_len=SEQ_LEN, seed=0)
  other_seed = MqarExamples(cfg.mqar, split="validation", seq_len=SEQ_LEN, seed=1)
  assert not np.array_equal(train.example(0)[0], examples.example(0)[0])
  assert not np.array_equal(other_seed.example(0)[0], examples.example(0)[0])


def test_seq_len_too_small(data_cfg):
  cfg = _mqar_cfg(data_cfg)
  _batch(cfg, seq_len=4 * PAIRS, batch_size=2)  # the minimum works
  with pytest.raises(ValueError, match="seq_len=15 is too small .* num_kv_pairs=4.* >= .* = 16"):
    _batch(cfg, seq_len=15)


def test_bad_mqar_config(data_cfg):
  with pytest.raises(ValueError, match="data.mqar.vocab_size=8 is too small for num_kv_pairs=4"):
    _batch(_mqar_cfg(data_cfg, vocab_size=8))
  with pytest.raises(ValueError, match="data.mqar.power_a=0.0 must be > 0"):
    _batch(_mqar_cfg(data_cfg, vocab_size=VOCAB, power_a=0.0))
  with pytest.raises(ValueError, match="0 MQAR validation examples .* process_count=1"):
    _batch(_mqar_cfg(data_cfg, power_a=0.01, num_val_examples=0), "validation")
