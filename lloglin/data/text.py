"""Text corpora, tokenized and packed into fixed-length rows with document boundaries kept.

Documents come from local files (`data.path`) or a tfds dataset (`data.name`). Each is framed as
`[BOS] + tokens + [EOS]` (each marker where the tokenizer has one; blank documents are skipped),
and the framed documents are concatenated into one token stream. Window k is
`stream[k * seq_len : k * seq_len + seq_len + 1]`: windows overlap by one token, so every token
after the first is a target exactly once; `inputs = window[:-1]`, `targets = window[1:]`.

Within a row:
- `segment_ids` number the documents from 1; a document continued from the previous window is 1.
- `positions` count from 0 at each document start and at the row start (a continued document
  restarts at 0, so positions stay below seq_len however long the document).
- `loss_mask` is 1 where the target belongs to the same document as the input token, and 0 where
  it starts the next document (input EOS, target the next BOS). So the model learns a document's
  first token from its BOS and learns to end it with EOS, but is never asked to guess the next
  document from the previous one.
"""

import array
import json
import pathlib
from typing import Iterable, Iterator

import numpy as np

from lloglin.data.tokenizers import Tokenizer

LOCAL_SUFFIXES = (".txt", ".jsonl")
_TFDS_READ_BATCH = 1024


class TextWindows:
  """Random access to the packed rows of one token stream; an item is one window."""

  def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, seq_len: int, what: str):
    self._tokens = tokens
    self._doc_starts = doc_starts
    self._seq_len = seq_len
    self.num_items = (len(tokens) - 1) // seq_len
    self.what = f"windows of {what}"

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of windows `indices`; W is the window axis (seq_len + 1 tokens)."""
    start_B = indices.astype(np.int64) * self._seq_len
    pos_BW = start_B[:, None] + np.arange(self._seq_len + 1)  # offsets into the stream
    tok_BW = self._tokens[pos_BW].astype(np.int32)
    doc_BW = np.searchsorted(self._doc_starts, pos_BW, side="right") - 1
    seg_BW = (doc_BW - doc_BW[:, :1] + 1).astype(np.int32)
    first_BW = np.maximum(self._doc_starts[doc_BW], start_B[:, None])  # where the piece starts
    return {
        "inputs": tok_BW[:, :-1],
        "targets": tok_BW[:, 1:],
        "loss_mask": (seg_BW[:, 1:] == seg_BW[:, :-1]).astype(np.float32),
        "segment_ids": seg_BW[:, :-1],
        "positions": (pos_BW - first_BW)[:, :-1].astype(np.int32),
    }


def make_text_source(data_cfg, tokenizer: Tokenizer, *, split: str, seq_len: int) -> TextWindows:
  """Reads, tokenizes and packs the `split` of the corpus that `data_cfg` names."""
  if data_cfg.path:
    if not 0 <= data_cfg.val_fraction < 1:
      raise ValueError(f"data.val_fraction={data_cfg.val_fraction} must be in [0, 1)")
    documents = split_tail(local_documents(data_cfg.path, data_cfg.text_key), split,
                           data_cfg.val_fraction)
    what = (f"data.path={data_cfg.path!r}, {split} split "
            f"(the last val_fraction={data_cfg.val_fraction} of its characters are validation)")
  elif data_cfg.name:
    documents = tfds_documents(data_cfg.name, split, data_cfg.tfds_data_dir, data_cfg.text_key)
    what = f"tfds dataset data.name={data_cfg.name!r}, {split} split"
  else:
    raise ValueError("data.source='text' needs data.path (local files) or data.name (a tfds "
                     "dataset); both are empty")
  tokens, doc_starts = tokenize_documents(documents, tokenizer)
  if len(tokens) < seq_len + 1:
    raise ValueError(f"{what}: the corpus has {len(tokens)} tokens, fewer than one window of "
                     f"seq_len + 1 = {seq_len + 1}")
  return TextWindows(tokens, doc_starts, seq_len, what)


def tokenize_documents(documents: Iterable[str],
                       tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """The framed token stream, and the offset at which each document starts in it."""
  head = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  tail = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
  small = tokenizer.vocab_size <= 2**16
  tokens = array.array("H" if small else "i")  # grows without one Python object per document
  starts = array.array("q")
  for text in documents:
    if text.strip():
      starts.append(len(tokens))
      tokens.extend(head + tokenizer.encode(text) + tail)
  return np.frombuffer(tokens, np.uint16 if small else np.int32), np.frombuffer(starts, np.int64)


def split_tail(documents: list[str], split: str, val_fraction: float) -> list[str]:
  """Train keeps the first (1 - val_fraction) of the corpus' characters, validation the rest.

  The document at the cut is split in two, so a single file (tiny_shakespeare) splits too.
  """
  total = sum(len(d) for d in documents)
  cut = round(total * (1 - val_fraction))
  head, tail, seen = [], [], 0
  for doc in documents:
    k = min(max(cut - seen, 0), len(doc))
    head.append(doc[:k])
    tail.append(doc[k:])
    seen += len(doc)
  return head if split == "train" else tail


def local_documents(path: str, text_key: str) -> list[str]:
  """A .txt file is one document, a .jsonl file one per line; a directory takes every .txt and
  .jsonl file below it, in sorted path order."""
  root = pathlib.Path(path)
  if not root.exists():
    raise FileNotFoundError(f"data.path={path!r} does not exist")
  if root.is_dir():
    files = sorted(p for p in root.rglob("*") if p.suffix in LOCAL_SUFFIXES and p.is_file())
    if not files:
      raise ValueError(f"data.path={path!r}: the directory holds no {' or '.join(LOCAL_SUFFIXES)} "
                       "files (empty corpus)")
  elif root.suffix in LOCAL_SUFFIXES:
    files = [root]
  else:
    raise ValueError(f"data.path={path!r}: unsupported file type {root.suffix!r}; expected a "
                     f"{' or '.join(LOCAL_SUFFIXES)} file, or a directory of them")
  documents = []
  for file in files:
    if file.suffix == ".txt":
      documents.append(file.read_text(encoding="utf-8", errors="replace"))
    else:
      documents.extend(_jsonl_documents(file, text_key))
  return documents


def jsonl_records(file: pathlib.Path) -> Iterator[tuple[int, object]]:
  """(line number, parsed JSON value) of every non-blank line of a JSON Lines file; a line that is
  not JSON is a ValueError naming the file and line."""
  with open(file, encoding="utf-8", errors="replace") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield line_number, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{file}:{line_number}: not a JSON record ({e})") from e


def _jsonl_documents(file: pathlib.Path, text_key: str) -> Iterator[str]:
  for line_number, record in jsonl_records(file):
    if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
      raise ValueError(f"{file}:{line_number}: expected a JSON object with a string field "
                       f"data.text_key={text_key!r}; got {json.dumps(record)[:80]!r}")
    yield record[text_key]


def tfds_documents(name: str, split: str, data_dir: str, text_key: str) -> Iterator[str]:
  """The `text_key` field of every example of a tfds dataset, prepared as array_record.

  array_record needs no TensorFlow. The first call downloads and prepares the dataset into
  `data_dir`; later calls read it. A dataset without a validation split (lm1b) serves its
  test split as validation.
  """
  import tensorflow_datasets as tfds  # not installed on every machine

  try:
    builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"data.name={name!r} is not a tfds dataset") from e
  if text_key not in builder.info.features:
    raise ValueError(f"data.text_key={text_key!r} is not a feature of tfds dataset {name!r}; it "
                     f"has {list(builder.info.features)}")
  builder.download_and_prepare(file_format="array_record")
  splits = builder.info.splits
  if split == "validation" and "validation" not in splits and "test" in splits:
    split = "test"
  source = builder.as_data_source(split=split)
  n = len(source)
  for start in range(0, n, _TFDS_READ_BATCH):  # array_record reads a batch in parallel
    for example in source.__getitems__(list(range(start, min(start + _TFDS_READ_BATCH, n)))):
      text = example[text_key]
      yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
