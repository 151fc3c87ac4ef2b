"""Tests for lloglin/data/tokenizers.py."""

import pytest

from lloglin.data import (ByteTokenizer, SentencePieceTokenizer, TiktokenTokenizer,
                          make_tokenizer)

TEXT = "Héllo, wörld! 你好 🙂 — ∑ x²"


@pytest.fixture
def text_cfg(data_cfg):
  data_cfg.source = "text"
  return data_cfg


def test_mqar_has_no_tokenizer(data_cfg):
  assert data_cfg.source == "mqar" and make_tokenizer(data_cfg) is None


def test_byte_round_trip_on_unicode(text_cfg):
  tok = make_tokenizer(text_cfg)
  assert isinstance(tok, ByteTokenizer)
  ids = tok.encode(TEXT)
  assert ids == list(TEXT.encode("utf-8"))
  assert all(0 <= i < 256 for i in ids)
  assert tok.decode(ids) == TEXT
  assert tok.vocab_size == 258 and {tok.bos_id, tok.eos_id} == {256, 257}


def test_byte_decode_drops_specials_and_replaces_invalid_utf8():
  tok = ByteTokenizer()
  ids = [tok.bos_id] + tok.encode("é") + [tok.eos_id]
  assert tok.decode(ids) == "é"
  assert tok.decode(tok.encode("é")[:1] + tok.encode("a")) == "\ufffda"  # cut mid-character


def test_sentencepiece_from_tokenizer_path(text_cfg, sentencepiece_model):
  text_cfg.tokenizer, text_cfg.tokenizer_path = "sentencepiece", sentencepiece_model
  tok = make_tokenizer(text_cfg)
  assert isinstance(tok, SentencePieceTokenizer) and tok.vocab_size == 48
  ids = tok.encode("the lazy fox")
  assert ids and all(0 <= i < 48 for i in ids)
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == "the lazy fox"


def test_sentencepiece_missing_model_file(text_cfg, tmp_path):
  text_cfg.tokenizer, text_cfg.tokenizer_path = "sentencepiece", str(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="data.tokenizer_path=.*nope.model"):
    make_tokenizer(text_cfg)


def test_tiktoken_encoding(tiktoken_encoding):
  tok = TiktokenTokenizer(tiktoken_encoding)
  assert tok.vocab_size == 258 and tok.eos_id == 257 and tok.bos_id is None
  ids = tok.encode("the <|endoftext|> " + TEXT)
  assert ids[0] == 256  # the merge
  assert 257 not in ids  # the special string in a document stays text
  assert tok.decode(ids + [257, 300]) == "the <|endoftext|> " + TEXT  # 300: beyond the vocab


def test_make_tokenizer_tiktoken_by_encoding_name(text_cfg, tiktoken_encoding, monkeypatch):
  tiktoken = pytest.importorskip("tiktoken")
  names = []
  monkeypatch.setattr(tiktoken, "get_encoding",
                      lambda name: names.append(name) or tiktoken_encoding)
  text_cfg.tokenizer, text_cfg.tokenizer_path = "tiktoken", "gpt2"
  assert make_tokenizer(text_cfg).vocab_size == 258
  assert names == ["gpt2"]


def test_tiktoken_needs_an_encoding_name(text_cfg):
  pytest.importorskip("tiktoken")
  text_cfg.tokenizer = "tiktoken"
  with pytest.raises(ValueError, match="data.tokenizer_path"):
    make_tokenizer(text_cfg)


def test_unknown_tokenizer(text_cfg):
  text_cfg.tokenizer = "wordpiece"
  with pytest.raises(ValueError, match="data.tokenizer='wordpiece' is unknown"):
    make_tokenizer(text_cfg)
