"""Tokenizers: bytes by default, sentencepiece or tiktoken when configured; words of a fixed
vocabulary for the synthetic multilingual world.

Every tokenizer has `encode(str) -> list[int]`, `decode(list[int]) -> str`, `vocab_size`, and
`bos_id` / `eos_id` (an id, or None where the tokenizer has no such token). `decode` drops
special ids, so a decoded model sample reads as plain text.
"""

import os
from typing import Protocol, Sequence

from lloglin.data import multilingual

TOKENIZERS = ("byte", "sentencepiece", "tiktoken")


class Tokenizer(Protocol):
  vocab_size: int
  bos_id: int | None
  eos_id: int | None

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then BOS = 256 and EOS = 257 (vocab_size 258)."""

  vocab_size = 258
  bos_id = 256
  eos_id = 257

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    """Skips special ids; invalid UTF-8 (e.g. a sample cut mid-character) becomes U+FFFD."""
    return bytes(int(i) for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class WordTokenizer:
  """Whitespace-separated words of a fixed vocabulary, one id each (its index); `bos` / `eos`
  name the special words."""

  def __init__(self, words: Sequence[str], *, bos: str, eos: str):
    self.words = tuple(words)
    self._ids = {w: i for i, w in enumerate(self.words)}
    if len(self._ids) != len(self.words):
      raise ValueError("words: the vocabulary repeats a word")
    self.vocab_size = len(self.words)
    self.bos_id, self.eos_id = self._ids[bos], self._ids[eos]

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[w] for w in text.split()]
    except KeyError as e:
      raise ValueError(f"text: the word {e.args[0]!r} is not in the vocabulary ({text!r:.80})"
                       ) from None

  def id(self, word: str) -> int:
    return self.encode(word)[0]

  def decode(self, ids: Sequence[int]) -> str:
    special = {self.bos_id, self.eos_id}
    return " ".join(self.words[int(i)] for i in ids
                    if 0 <= i < self.vocab_size and int(i) not in special)


def world_tokenizer() -> WordTokenizer:
  """The word-level tokenizer of the synthetic multilingual world (lloglin.data.multilingual)."""
  return WordTokenizer(multilingual.VOCABULARY, bos="<bos>", eos="<eos>")


class SentencePieceTokenizer:
  """A trained sentencepiece model (`.model` file, or its serialized bytes)."""

  def __init__(self, model_path: str = "", *, model_proto: bytes | None = None):
    import sentencepiece as spm  # not installed on every machine

    if model_proto is None:
      model_proto = _read_file(model_path, "sentencepiece .model file")
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self.bos_id = _id_or_none(self._sp.bos_id())
    self.eos_id = _id_or_none(self._sp.eos_id())

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if 0 <= i < self.vocab_size])


class TiktokenTokenizer:
  """A `tiktoken.Encoding`. Its `<|endoftext|>` token, where it has one, is the EOS."""

  def __init__(self, encoding):
    self._enc = encoding
    self._special_ids = {encoding.encode_single_token(t) for t in encoding.special_tokens_set}
    self.vocab_size = encoding.n_vocab
    self.bos_id = None
    self.eos_id = encoding.eot_token if "<|endoftext|>" in encoding.special_tokens_set else None

  def encode(self, text: str) -> list[int]:
    # encode_ordinary: a document that happens to contain "<|endoftext|>" stays plain text.
    return self._enc.encode_ordinary(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._enc.decode([int(i) for i in ids
                             if 0 <= i < self.vocab_size and int(i) not in self._special_ids])


def make_tokenizer(data_cfg) -> Tokenizer | None:
  """The tokenizer named by `data_cfg.tokenizer`, loaded from `data_cfg.tokenizer_path`; None
  for `data_cfg.source == "mqar"`, whose tokens are not text; the world's words for
  `data_cfg.source == "multilingual"`.

  For tiktoken, `tokenizer_path` names an encoding ("gpt2", "cl100k_base"); tiktoken downloads
  it once and caches it (set TIKTOKEN_CACHE_DIR to use a copy on a machine without network).
  """
  if data_cfg.source == "mqar":
    return None
  if data_cfg.source == "multilingual":
    return world_tokenizer()
  name, path = data_cfg.tokenizer, data_cfg.tokenizer_path
  if name == "byte":
    return ByteTokenizer()
  if name == "sentencepiece":
    return SentencePieceTokenizer(path)
  if name == "tiktoken":
    return TiktokenTokenizer(_tiktoken_encoding(path))
  raise ValueError(f"data.tokenizer={name!r} is unknown; expected one of {TOKENIZERS}")


def _tiktoken_encoding(name: str):
  import tiktoken  # not installed on every machine

  if not name:
    raise ValueError("data.tokenizer='tiktoken' needs data.tokenizer_path to name an encoding, "
                     "e.g. 'gpt2'; got ''")
  try:
    return tiktoken.get_encoding(name)
  except ValueError as e:
    raise ValueError(f"data.tokenizer_path={name!r} is not a tiktoken encoding "
                     f"(known: {tiktoken.list_encoding_names()})") from e


def _read_file(path: str, what: str) -> bytes:
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"data.tokenizer_path={path!r}: no {what} there")
  with open(path, "rb") as f:
    return f.read()


def _id_or_none(i: int) -> int | None:
  return i if i >= 0 else None
