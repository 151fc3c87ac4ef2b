"""Tests for lloglin/data/text.py: sources, splits, packing and their errors."""

import json

import numpy as np
import pytest

from lloglin.data import (ByteTokenizer, SentencePieceTokenizer, TiktokenTokenizer,
                          make_dataset)
from lloglin.data.text import make_text_source, split_tail

DOCS = ["ab", "Première ligne", "x", "a longer document — with ünïcödé ✓", "   ", "end"]


def _write_jsonl(path, docs, key="text"):
  path.write_text("".join(json.dumps({key: d, "id": i}) + "\n" for i, d in enumerate(docs)))
  return str(path)


def _expected_rows(docs, seq_len, tok):
  """A loop-by-loop packing oracle (blank documents skipped)."""
  stream, doc_of = [], []
  for d, text in enumerate(t for t in docs if t.strip()):
    ids = [i for i in [tok.bos_id] if i is not None] + tok.encode(text) + [tok.eos_id]
    stream += ids
    doc_of += [d] * len(ids)
  rows = []
  for k in range((len(stream) - 1) // seq_len):
    w = range(k * seq_len, k * seq_len + seq_len + 1)
    seg = [doc_of[i] - doc_of[w[0]] + 1 for i in w]
    pos = [0]
    for i in w[1:]:
      pos.append(pos[-1] + 1 if doc_of[i] == doc_of[i - 1] else 0)
    rows.append({
        "inputs": [stream[i] for i in w[:-1]], "targets": [stream[i] for i in w[1:]],
        "segment_ids": seg[:-1], "positions": pos[:-1],
        "loss_mask": [float(seg[j] == seg[j + 1]) for j in range(seq_len)]})
  return rows


def _tokenizer(kind, request):
  if kind == "sentencepiece":
    return SentencePieceTokenizer(request.getfixturevalue("sentencepiece_model"))
  if kind == "tiktoken":  # EOS only, no BOS
    return TiktokenTokenizer(request.getfixturevalue("tiktoken_encoding"))
  return ByteTokenizer()


@pytest.mark.parametrize("kind", ["byte", "sentencepiece", "tiktoken"])
@pytest.mark.parametrize("seq_len", [3, 7, 16])
def test_packing_matches_oracle(data_cfg, tmp_path, request, kind, seq_len):
  tok = _tokenizer(kind, request)
  data_cfg.source, data_cfg.val_fraction = "text", 0.0
  data_cfg.path = _write_jsonl(tmp_path / "docs.jsonl", DOCS)
  source = make_text_source(data_cfg, tok, split="train", seq_len=seq_len)
  rows = source.rows(np.arange(source.num_items))
  expected = _expected_rows(DOCS, seq_len, tok)
  assert source.num_items == len(expected)
  for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("segment_ids", np.int32),
                     ("positions", np.int32), ("loss_mask", np.float32)]:
    assert rows[key].dtype == dtype and rows[key].shape == (len(expected), seq_len)
    np.testing.assert_array_equal(rows[key], [r[key] for r in expected], err_msg=key)


def test_packing_at_a_document_boundary(data_cfg, tmp_path):
  # Stream: BOS a b EOS BOS c d e EOS; seq_len 3 gives windows [0:4] and [3:7].
  data_cfg.source, data_cfg.val_fraction = "text", 0.0
  data_cfg.path = _write_jsonl(tmp_path / "docs.jsonl", ["ab", "cde"])
  source = make_text_source(data_cfg, ByteTokenizer(), split="train", seq_len=3)
  row = {k: v[1] for k, v in source.rows(np.array([0, 1])).items()}
  np.testing.assert_array_equal(row["inputs"], [257, 256, ord("c")])
  np.testing.assert_array_equal(row["targets"], [256, ord("c"), ord("d")])
  np.testing.assert_array_equal(row["segment_ids"], [1, 2, 2])
  np.testing.assert_array_equal(row["positions"], [0, 0, 1])
  np.testing.assert_array_equal(row["loss_mask"], [0, 1, 1])  # EOS -> next BOS is not a target
  assert source.num_items == 2


def test_txt_splits_into_train_and_validation_tail(data_cfg, tmp_path):
  text = "".join(chr(ord("a") + i % 26) for i in range(1000))
  (tmp_path / "one.txt").write_text(text)
  data_cfg.source, data_cfg.path, data_cfg.val_fraction = "text", str(tmp_path / "one.txt"), 0.1
  val = make_dataset(data_cfg, split="validation", seq_len=10, batch_size=10, seed=0)
  # Validation keeps order: BOS, then the last 100 characters.
  assert ByteTokenizer().decode(next(val)["inputs"].reshape(-1)) == text[900:999]
  train = make_dataset(data_cfg, split="train", seq_len=10, batch_size=90, seed=0)
  assert train.items_per_epoch == 90  # (1 + 900 + 1 - 1) // 10
  assert next(train)["inputs"].shape == (90, 10)


def _decoded_stream(data_cfg, split="train"):
  """The whole token stream of a split, decoded: with seq_len 1 the windows are its token pairs."""
  source = make_text_source(data_cfg, ByteTokenizer(), split=split, seq_len=1)
  rows = source.rows(np.arange(source.num_items))
  return ByteTokenizer().decode(np.concatenate([rows["inputs"][:, 0], rows["targets"][-1:, 0]]))


def test_split_tail_cuts_the_corpus_by_characters():
  docs = ["abc", "defgh", "ijkl"]  # 12 characters; the last 0.25 of them (3) are validation
  assert split_tail(docs, "train", 0.25) == ["abc", "defgh", "i"]
  assert split_tail(docs, "validation", 0.25) == ["", "", "jkl"]


def test_directory_takes_txt_and_jsonl_in_sorted_order(data_cfg, tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "b.txt").write_text("second")
  (tmp_path / "a.jsonl").write_text('{"body": "first"}\n\n{"body": "also first"}\n')
  (tmp_path / "sub" / "c.txt").write_text("third")
  (tmp_path / "ignored.csv").write_text("not read")
  data_cfg.source, data_cfg.path, data_cfg.text_key = "text", str(tmp_path), "body"
  data_cfg.val_fraction = 0.0
  assert _decoded_stream(data_cfg) == "firstalso firstsecondthird"


def test_shakespeare_real_text(data_cfg, shakespeare_path):
  data_cfg.source, data_cfg.path = "text", shakespeare_path
  ds = make_dataset(data_cfg, split="validation", seq_len=64, batch_size=4, seed=0)
  batch = next(ds)
  assert ds.vocab_size == 258
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  with open(shakespeare_path, encoding="utf-8") as f:
    text = f.read()
  cut = round(len(text) * (1 - data_cfg.val_fraction))
  assert batch["inputs"][0, 0] == ds.tokenizer.bos_id  # the held-out tail is its own document
  assert ds.tokenizer.decode(batch["inputs"][:2].reshape(-1)) == text[cut:cut + 127]


def test_missing_path(data_cfg, tmp_path):
  data_cfg.source, data_cfg.path = "text", str(tmp_path / "missing.txt")
  with pytest.raises(FileNotFoundError, match="data.path=.*missing.txt.* does not exist"):
    make_dataset(data_cfg, split="train", seq_len=8, batch_size=1, seed=0)


@pytest.mark.parametrize("content", ["", "   \n\n", "short"])
def test_empty_or_too_small_corpus(data_cfg, tmp_path, content):
  (tmp_path / "c.txt").write_text(content)
  data_cfg.source, data_cfg.path = "text", str(tmp_path / "c.txt")
  with pytest.raises(ValueError, match="fewer than one window of seq_len \\+ 1 = 65"):
    make_dataset(data_cfg, split="train", seq_len=64, batch_size=1, seed=0)


def test_empty_directory(data_cfg, tmp_path):
  data_cfg.source, data_cfg.path = "text", str(tmp_path)
  with pytest.raises(ValueError, match="no .txt or .jsonl files"):
    make_dataset(data_cfg, split="train", seq_len=8, batch_size=1, seed=0)


def test_no_validation_tail(data_cfg, tmp_path):
  (tmp_path / "c.txt").write_text("plenty of text " * 50)
  data_cfg.source, data_cfg.path, data_cfg.val_fraction = "text", str(tmp_path / "c.txt"), 0.0
  with pytest.raises(ValueError, match="validation split.*val_fraction=0.0.*0 tokens"):
    make_dataset(data_cfg, split="validation", seq_len=8, batch_size=1, seed=0)


def test_bad_local_inputs(data_cfg, tmp_path):
  data_cfg.source = "text"
  (tmp_path / "c.csv").write_text("a,b")
  data_cfg.path = str(tmp_path / "c.csv")
  with pytest.raises(ValueError, match="unsupported file type '.csv'"):
    make_dataset(data_cfg, split="train", seq_len=8, batch_size=1, seed=0)
  data_cfg.path = _write_jsonl(tmp_path / "d.jsonl", ["fine"], key="content")
  with pytest.raises(ValueError, match="d.jsonl:1: .*data.text_key='text'"):
    make_dataset(data_cfg, split="train", seq_len=8, batch_size=1, seed=0)
  data_cfg.path, data_cfg.val_fraction = str(tmp_path), 1.0
  with pytest.raises(ValueError, match="data.val_fraction=1.0"):
    make_dataset(data_cfg, split="train", seq_len=8, batch_size=1, seed=0)
  data_cfg.path, data_cfg.name = "", ""
  with pytest.raises(ValueError, match="needs data.path .* or data.name"):
    make_dataset(data_cfg, split="train", seq_len=8, batch_size=1, seed=0)


def test_corpus_too_small_for_the_processes(data_cfg, tmp_path):
  data_cfg.source, data_cfg.val_fraction = "text", 0.0
  data_cfg.path = _write_jsonl(tmp_path / "d.jsonl", ["0123456789"])  # 12 tokens: 2 windows of 6
  make_dataset(data_cfg, split="train", seq_len=5, batch_size=1, seed=0, process_count=2)
  with pytest.raises(ValueError, match="2 windows of .* process_count=3 processes"):
    make_dataset(data_cfg, split="train", seq_len=5, batch_size=1, seed=0, process_index=2,
                 process_count=3)


def _tfds_cfg(data_cfg, name, data_dir=""):
  data_cfg.source, data_cfg.name, data_cfg.tfds_data_dir = "text", name, data_dir
  return data_cfg


@pytest.fixture
def tfds_mock(monkeypatch):
  """tfds.testing.mock_data(num_examples), its batched read fixed: in tfds 4.9.10 the mock's
  `__getitems__` is a partial stored on the instance, so it misses its `self` argument."""
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr("tensorflow_datasets.testing.mocking._getitems",
                      lambda keys, generator, serialized=False: [generator[k] for k in keys])
  return lambda num_examples: tfds.testing.mock_data(
      num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def test_tfds_by_name_with_mock_data(data_cfg, tfds_mock):
  with tfds_mock(6):
    ds = make_dataset(_tfds_cfg(data_cfg, "tiny_shakespeare"), split="validation", seq_len=16,
                      batch_size=2, seed=0)
    batch = next(ds)
  assert batch["inputs"].shape == (2, 16) and batch["inputs"][0, 0] == 256
  assert (batch["segment_ids"] >= 1).all()


def test_tfds_prepared_builder(data_cfg, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from tests.data import tiny_text_builder  # registers "lloglin_tiny_text"

  cfg = _tfds_cfg(data_cfg, "lloglin_tiny_text", str(tmp_path))
  for split, docs in [("train", tiny_text_builder.TRAIN_TEXTS),
                      ("validation", tiny_text_builder.TEST_TEXTS)]:  # no validation: test
    stream = _decoded_stream(cfg, split)
    assert all(d in stream for d in docs), split  # tfds shuffles the documents' order
    assert len(stream) == len("".join(docs)), split


def test_tfds_unknown_name_and_key(data_cfg, tfds_mock):
  with pytest.raises(ValueError, match="data.name='no_such_dataset_xyz' is not a tfds dataset"):
    make_dataset(_tfds_cfg(data_cfg, "no_such_dataset_xyz"), split="train", seq_len=8,
                 batch_size=1, seed=0)
  data_cfg.text_key = "content"
  with tfds_mock(2), pytest.raises(ValueError, match="data.text_key='content' is not a feature"):
    make_dataset(_tfds_cfg(data_cfg, "tiny_shakespeare"), split="train", seq_len=8,
                 batch_size=1, seed=0)
