"""Tests for lloglin/data/preferences.py: the synthetic world's rule, the padding convention, the
JSONL loader's truncation and its errors."""

import json

import numpy as np
import pytest

from lloglin.data import make_preference_dataset
from lloglin.data.preferences import SEP
from lloglin.data.tokenizers import ByteTokenizer

SEQ_LEN = 16


def _synthetic(data_cfg, **prefs):
  data_cfg.source = "synthetic_preferences"
  data_cfg.preferences.update(prefs)
  return data_cfg


def _batch(data_cfg, split="train", batch_size=64, seq_len=SEQ_LEN, seed=0):
  ds = make_preference_dataset(data_cfg, split=split, seq_len=seq_len, batch_size=batch_size,
                               seed=seed)
  return next(ds)


def _unpad(batch, name, b):
  """Row b of `name` without its padding; checks the padding convention on the way."""
  seg = batch[f"{name}_segment_ids"][b]
  n = int(seg.sum())
  assert (seg[:n] == 1).all() and (seg[n:] == 0).all() and (batch[name][b, n:] == 0).all()
  return batch[name][b, :n]


@pytest.mark.parametrize("num_errors", [1, 3])
def test_chosen_repeats_the_prompt_and_rejected_breaks_it_num_errors_times(data_cfg, num_errors):
  cfg = _synthetic(data_cfg, prompt_len=6, min_response_len=2, max_response_len=5,
                   num_errors=num_errors)
  batch = _batch(cfg)
  lengths = set()
  for b in range(64):
    chosen, rejected = _unpad(batch, "chosen", b), _unpad(batch, "rejected", b)
    assert len(chosen) == len(rejected) and chosen[6] == rejected[6] == SEP
    np.testing.assert_array_equal(chosen[:6], rejected[:6])
    prompt, good, bad = chosen[:6], chosen[7:], rejected[7:]
    lengths.add(len(good))
    assert np.isin(good, prompt).all()
    changed = good != bad
    assert changed.sum() == min(num_errors, len(good))
    assert not np.isin(bad[changed], prompt).any()
  assert lengths == {2, 3, 4, 5}


def test_synthetic_pairs_depend_on_seed_and_split(data_cfg):
  cfg = _synthetic(data_cfg)
  first = _batch(cfg, batch_size=8)
  np.testing.assert_array_equal(_batch(cfg, batch_size=8)["chosen"], first["chosen"])
  for other in (_batch(cfg, batch_size=8, seed=1), _batch(cfg, split="validation", batch_size=8)):
    assert not np.array_equal(other["chosen"], first["chosen"])


def test_synthetic_world_refuses_rows_longer_than_seq_len(data_cfg):
  cfg = _synthetic(data_cfg, prompt_len=8, max_response_len=6)
  with pytest.raises(ValueError, match="seq_len=12 is too small.*15"):
    _batch(cfg, seq_len=12)


def _jsonl(data_cfg, tmp_path, records, val_fraction=0.25):
  path = tmp_path / "prefs.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
  data_cfg.source, data_cfg.path, data_cfg.val_fraction = "preference_jsonl", str(path), val_fraction
  data_cfg.tokenizer = "byte"
  return data_cfg


def _record(i, prompt="Q?", chosen="yes", rejected="no"):
  return {"prompt": f"{prompt}{i}", "chosen": chosen, "rejected": rejected}


def test_jsonl_rows_are_bos_prompt_response_eos_right_padded_and_split_by_tail(data_cfg, tmp_path):
  cfg = _jsonl(data_cfg, tmp_path, [_record(i) for i in range(4)])
  tok = ByteTokenizer()
  train = make_preference_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=3, seed=0)
  val = make_preference_dataset(cfg, split="validation", seq_len=SEQ_LEN, batch_size=1, seed=0)
  assert (train.items_per_epoch, val.items_per_epoch, train.vocab_size) == (3, 1, 258)
  batch = next(val)
  for name, text in (("chosen", "Q?3yes"), ("rejected", "Q?3no")):
    np.testing.assert_array_equal(_unpad(batch, name, 0),
                                  [tok.bos_id, *tok.encode(text), tok.eos_id])
  batch = next(train)
  assert sorted(tok.decode(_unpad(batch, "rejected", b)) for b in range(3)) == [
      "Q?0no", "Q?1no", "Q?2no"]


def test_jsonl_long_prompt_is_truncated_from_the_left(data_cfg, tmp_path):
  cfg = _jsonl(data_cfg, tmp_path, [_record(0, prompt="abcdefghijklmnop", chosen="YES")],
               val_fraction=0.0)
  row = _unpad(_batch(cfg, batch_size=1), "chosen", 0)
  assert len(row) == SEQ_LEN and row[0] == ByteTokenizer.bos_id
  assert ByteTokenizer().decode(row) == "abcdefghijklmnop0YES"[-(SEQ_LEN - 2):]


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p", "chosen": "c"}, r"prefs.jsonl:1: .*missing or not a string: \['rejected'\]"),
    ({"prompt": "p", "chosen": 3, "rejected": "r"}, r"prefs.jsonl:1: .*\['chosen'\]"),
    ({"prompt": "p", "chosen": "c" * 15, "rejected": "r"},
     r"prefs.jsonl:1: the 'chosen' response takes 17 tokens .* seq_len=16"),
])
def test_jsonl_bad_records_are_named(data_cfg, tmp_path, record, message):
  cfg = _jsonl(data_cfg, tmp_path, [record], val_fraction=0.0)
  with pytest.raises(ValueError, match=message):
    _batch(cfg, batch_size=1)


def test_jsonl_missing_file_and_wrong_source_are_named(data_cfg, tmp_path):
  cfg = _jsonl(data_cfg, tmp_path, [_record(0)])
  cfg.path = str(tmp_path / "nope.jsonl")
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    _batch(cfg)
  cfg.source = "mqar"
  with pytest.raises(ValueError, match="data.source='mqar'.*synthetic_preferences"):
    _batch(cfg)
