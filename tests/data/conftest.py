"""Fixtures for the data tests: the real `data` config section and tiny trained tokenizers."""

import io

import pytest

from configs.base import get_base_config


@pytest.fixture
def data_cfg():
  """A fresh copy of configs/base.py's `data` section (MQAR, byte tokenizer) to edit."""
  return get_base_config().data


@pytest.fixture
def sentencepiece_model(tmp_path):
  """Path of a 48-piece BPE sentencepiece model trained on a few lines (BOS 1, EOS 2)."""
  spm = pytest.importorskip("sentencepiece")
  lines = ["the quick brown fox jumps over the lazy dog", "to be or not to be, héllo wörld"]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines * 10), model_writer=model,
                                 vocab_size=48, model_type="bpe", minloglevel=2)
  path = tmp_path / "tiny.model"
  path.write_bytes(model.getvalue())
  return str(path)


@pytest.fixture
def tiktoken_encoding():
  """A byte-level BPE with one merge ("th" = 256) and <|endoftext|> = 257, built in-process:
  real encodings ("gpt2") are downloaded, which this machine cannot do."""
  tiktoken = pytest.importorskip("tiktoken")
  ranks = {bytes([i]): i for i in range(256)} | {b"th": 256}
  return tiktoken.Encoding(name="tiny", pat_str=r"\s?\S+|\s+", mergeable_ranks=ranks,
                           special_tokens={"<|endoftext|>": 257})
