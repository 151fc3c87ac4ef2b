"""Tests for lloglin/data/dataset.py: determinism, resumption, epochs and process shards."""

import json
import types

import numpy as np
import pytest

from lloglin.data import make_dataset
from lloglin.data.mqar import MqarExamples

SEQ_LEN = 16


def _mqar(data_cfg, num_examples=20):
  data_cfg.mqar.update({"vocab_size": 64, "num_kv_pairs": 2, "num_train_examples": num_examples,
                        "num_val_examples": num_examples})
  return data_cfg


def _text(data_cfg, tmp_path):
  (tmp_path / "t.txt").write_text(" ".join(str(i) for i in range(400)))
  data_cfg.source, data_cfg.path, data_cfg.val_fraction = "text", str(tmp_path / "t.txt"), 0.2
  return data_cfg


def _take(ds, n):
  return [next(ds) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _rows(batches):
  """Each row of the batches as a hashable key (its inputs)."""
  return [row.tobytes() for b in batches for row in b["inputs"]]


@pytest.mark.parametrize("source", ["mqar", "text"])
def test_deterministic_from_the_seed(data_cfg, tmp_path, source):
  cfg = _mqar(data_cfg) if source == "mqar" else _text(data_cfg, tmp_path)

  def batches(seed):
    return _take(make_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=4, seed=seed), 6)

  _assert_same(batches(3), batches(3))
  assert _rows(batches(3)) != _rows(batches(4))


@pytest.mark.parametrize("source", ["mqar", "text"])
@pytest.mark.parametrize("skip", [2, 3])  # index 14 of epoch 0; index 1 of epoch 1
def test_set_state_resumes_exactly(data_cfg, tmp_path, source, skip):
  cfg = _mqar(data_cfg) if source == "mqar" else _text(data_cfg, tmp_path)
  ds = make_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=7, seed=0)
  if source == "mqar":
    assert ds.items_per_epoch == 20
  _take(ds, skip)
  state = json.loads(json.dumps(ds.get_state()))
  expected = _take(ds, 4)  # runs over (another) epoch boundary
  resumed = make_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=7, seed=0)
  resumed.set_state(state)
  _assert_same(_take(resumed, 4), expected)
  assert resumed.get_state() == ds.get_state()


def test_state_counts_epochs(data_cfg):
  ds = make_dataset(_mqar(data_cfg), split="train", seq_len=SEQ_LEN, batch_size=7, seed=0)
  assert ds.get_state() == {"epoch": 0, "index": 0}
  _take(ds, 3)
  assert ds.get_state() == {"epoch": 1, "index": 1}


def test_each_epoch_visits_every_example_once_in_a_new_order(data_cfg):
  cfg = _mqar(data_cfg)
  ds = make_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=20, seed=0)
  examples = MqarExamples(cfg.mqar, split="train", seq_len=SEQ_LEN, seed=0)
  all_rows = {examples.example(i)[0].tobytes() for i in range(20)}
  epoch0, epoch1 = _rows([next(ds)]), _rows([next(ds)])
  assert set(epoch0) == set(epoch1) == all_rows
  assert epoch0 != epoch1


def test_validation_keeps_its_order_and_cycles(data_cfg):
  cfg = _mqar(data_cfg, num_examples=6)
  ds = make_dataset(cfg, split="validation", seq_len=SEQ_LEN, batch_size=4, seed=0)
  examples = MqarExamples(cfg.mqar, split="validation", seq_len=SEQ_LEN, seed=0)
  expected = [examples.example(i % 6)[0].tobytes() for i in range(12)]
  assert _rows(_take(ds, 3)) == expected


@pytest.mark.parametrize("source", ["mqar", "text"])
def test_processes_read_disjoint_shards(data_cfg, tmp_path, source):
  cfg = _mqar(data_cfg, num_examples=31) if source == "mqar" else _text(data_cfg, tmp_path)
  shards = []
  for p in range(3):
    ds = make_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=1, seed=0,
                      process_index=p, process_count=3)
    shards.append(set(_rows(_take(ds, ds.items_per_epoch))))
    assert len(shards[-1]) == ds.items_per_epoch
  assert not shards[0] & shards[1] and not shards[0] & shards[2] and not shards[1] & shards[2]
  single = make_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=1, seed=0)
  assert set().union(*shards) <= set(_rows(_take(single, single.items_per_epoch)))


def test_plain_namespace_config(tmp_path):
  (tmp_path / "t.txt").write_text("attribute access is all the data package needs " * 4)
  cfg = types.SimpleNamespace(source="text", name="", path=str(tmp_path / "t.txt"),
                              text_key="text", tfds_data_dir="", tokenizer="byte",
                              tokenizer_path="", val_fraction=0.1, mqar=None)
  batch = next(make_dataset(cfg, split="train", seq_len=8, batch_size=2, seed=0))
  assert batch["inputs"].shape == (2, 8)


def test_worker_processes_make_the_same_batches(data_cfg):
  """data.num_workers = 2: the rows come from two spawned processes, the batches (and a resume
  from a saved position) are the single process's."""
  cfg = _mqar(data_cfg)
  make = lambda: make_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=7, seed=0)  # noqa: E731
  expected = _take(make(), 4)
  cfg.num_workers = 2
  ds = make()
  _assert_same(_take(ds, 2), expected[:2])
  resumed = make()
  resumed.set_state(ds.get_state())
  _assert_same(_take(resumed, 2), expected[2:])


def test_bad_arguments(data_cfg):
  cfg = _mqar(data_cfg)
  cases = [
      ({"split": "test"}, "split='test' is unknown"),
      ({"batch_size": 0}, "batch_size=0 must be a positive int"),
      ({"seed": -1}, "seed=-1 must be a non-negative int"),
      ({"process_index": 2, "process_count": 2}, "process_index=2 must be an int in"),
  ]
  for overrides, message in cases:
    kwargs = {"split": "train", "seq_len": SEQ_LEN, "batch_size": 2, "seed": 0} | overrides
    with pytest.raises(ValueError, match=message):
      make_dataset(cfg, **kwargs)
  cfg.num_workers = -1
  with pytest.raises(ValueError, match="data.num_workers=-1 must be a non-negative int"):
    make_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=2, seed=0)
  cfg.num_workers = 0
  cfg.source = "parquet"
  with pytest.raises(ValueError, match="data.source='parquet' is unknown"):
    make_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=2, seed=0)


def test_bad_state(data_cfg):
  ds = make_dataset(_mqar(data_cfg), split="train", seq_len=SEQ_LEN, batch_size=2, seed=0)
  for state in [{"epoch": 0}, {"epoch": 0, "index": 20}, {"epoch": -1, "index": 0},
                {"epoch": 0, "index": 0, "step": 3}, {"epoch": 0, "index": 1.5}]:
    with pytest.raises(ValueError, match="data iterator state .* is invalid"):
      ds.set_state(state)
  ds.set_state({"epoch": np.int64(2), "index": np.array(19)})  # as a checkpoint may return it
  assert ds.get_state() == {"epoch": 2, "index": 19}
  assert type(ds.get_state()["epoch"]) is int
