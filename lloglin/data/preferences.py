"""Preference pairs for reward models: an offline synthetic world and a JSONL loader.

A batch maps "chosen", "rejected" (int32 tokens) and "chosen_segment_ids",
"rejected_segment_ids" (int32) to [batch, seq_len] arrays. Each row is one sequence, prompt then
response, right-padded: its tokens have segment id 1, the padding after them token 0 and segment
id 0 (the padding convention of lloglin.models.reward, which reads the reward at the last
non-padding token).

`data.source` picks the pairs:
- "synthetic_preferences": the stay-on-topic world (`SyntheticPreferences`, data.preferences);
- "preference_jsonl": records {"prompt", "chosen", "rejected"} of the .jsonl file data.path, text
  through the configured tokenizer (`JsonlPreferences`).
"""

import math
import pathlib

import numpy as np

from lloglin.data.dataset import Dataset, check_arguments
from lloglin.data.text import jsonl_records
from lloglin.data.tokenizers import Tokenizer, make_tokenizer

SOURCES = ("synthetic_preferences", "preference_jsonl")
FIELDS = ("prompt", "chosen", "rejected")
PAD, SEP = 0, 1  # synthetic world: padding, the separator between prompt and response
_STREAM = 0x5052  # keeps these seeds apart from the other generators' seeds
_SPLIT_CODES = {"train": 0, "validation": 1}


def pack_pairs(chosen: list, rejected: list, seq_len: int) -> dict[str, np.ndarray]:
  """Right-pads token lists (each at most seq_len long) into a batch of the format above."""
  return pack_rows({"chosen": chosen, "rejected": rejected}, seq_len)


def pack_rows(rows_by_name: dict[str, list], seq_len: int) -> dict[str, np.ndarray]:
  """Right-pads each name's token lists (each at most seq_len long) into [len(rows), seq_len]
  arrays `name` (tokens, PAD after the row) and `name_segment_ids` (1 on the row, 0 after)."""
  out = {}
  for name, rows in rows_by_name.items():
    tokens_BT = np.full((len(rows), seq_len), PAD, np.int32)
    segment_ids_BT = np.zeros((len(rows), seq_len), np.int32)
    for b, row in enumerate(rows):
      tokens_BT[b, :len(row)] = row
      segment_ids_BT[b, :len(row)] = 1
    out[name], out[f"{name}_segment_ids"] = tokens_BT, segment_ids_BT
  return out


class SyntheticPreferences:
  """The stay-on-topic world: the chosen response only repeats words of the prompt.

  With V = vocab_size (0 is padding, 1 the separator, words are [2, V)), example i of a split
  is a pure function of (seed, split, i):
  - the prompt: prompt_len words drawn uniformly from [2, V);
  - the chosen response: a length R uniform in [min_response_len, max_response_len], R words
    drawn uniformly from the prompt's words;
  - the rejected response: the chosen one with min(num_errors, R) positions replaced by words
    that are not in the prompt.
  Both rows are prompt, SEP, response. Every word is uniform over [2, V) in chosen and rejected
  alike, so no bag of words tells them apart: the model has to compare the response with the
  prompt. An item is one pair.
  """

  def __init__(self, prefs_cfg, *, split: str, seq_len: int, seed: int):
    vocab, p = prefs_cfg.vocab_size, prefs_cfg.prompt_len
    lo, hi = prefs_cfg.min_response_len, prefs_cfg.max_response_len
    if p < 1 or not 1 <= lo <= hi:
      raise ValueError(f"data.preferences: prompt_len={p}, min_response_len={lo}, "
                       f"max_response_len={hi}; expected prompt_len >= 1 and "
                       "1 <= min_response_len <= max_response_len")
    if vocab - 2 <= p:
      raise ValueError(f"data.preferences.vocab_size={vocab} leaves no word outside a prompt of "
                       f"prompt_len={p}; expected vocab_size >= prompt_len + 3 = {p + 3}")
    if prefs_cfg.num_errors < 1:
      raise ValueError(f"data.preferences.num_errors={prefs_cfg.num_errors} must be at least 1")
    if seq_len < p + 1 + hi:
      raise ValueError(f"seq_len={seq_len} is too small for data.preferences: a row holds "
                       f"prompt_len + 1 + max_response_len = {p + 1 + hi} tokens")
    self._cfg, self._seq_len = prefs_cfg, seq_len
    self._seed, self._split_code = seed, _SPLIT_CODES[split]
    self.num_items = (prefs_cfg.num_train_examples if split == "train"
                      else prefs_cfg.num_val_examples)
    self.what = f"synthetic preference {split} pairs"

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    chosen, rejected = zip(*(self.example(int(i)) for i in indices))
    return pack_pairs(chosen, rejected, self._seq_len)

  def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The chosen and rejected rows of pair `index` (unpadded, equally long)."""
    c = self._cfg
    rng = np.random.default_rng([_STREAM, self._seed, self._split_code, index])
    prompt = rng.integers(2, c.vocab_size, c.prompt_len)
    length = int(rng.integers(c.min_response_len, c.max_response_len + 1))
    chosen = rng.choice(prompt, length)
    rejected = chosen.copy()
    errors = rng.choice(length, min(c.num_errors, length), replace=False)
    rejected[errors] = rng.choice(np.setdiff1d(np.arange(2, c.vocab_size), prompt), len(errors))
    head = np.append(prompt, SEP)
    return np.append(head, chosen), np.append(head, rejected)


class JsonlPreferences:
  """Pairs from a .jsonl file of {"prompt": str, "chosen": str, "rejected": str} records.

  A row is [BOS] + prompt + response + [EOS] (each marker where the tokenizer has one; put any
  separator you want between prompt and response in the text). A row longer than seq_len loses
  the start of its prompt (left truncation, BOS kept): the end of the prompt and the whole
  response stay. A response that does not fit even with an empty prompt is an error. The last
  ceil(val_fraction * records) records are the validation split, the others the training split.
  """

  def __init__(self, path: str, tokenizer: Tokenizer, *, split: str, seq_len: int,
               val_fraction: float):
    if not path:
      raise ValueError("data.source='preference_jsonl' needs data.path, a .jsonl file of "
                       "{'prompt', 'chosen', 'rejected'} records; got ''")
    file = pathlib.Path(path)
    if not file.is_file():
      raise FileNotFoundError(f"data.path={path!r}: no such file")
    if not 0 <= val_fraction < 1:
      raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1)")
    records = list(_records(file))
    cut = len(records) - math.ceil(len(records) * val_fraction)
    lines = range(cut) if split == "train" else range(cut, len(records))
    self._seq_len = seq_len
    self._chosen, self._rejected = [], []
    for i in lines:
      line_number, record = records[i]
      for name, rows in (("chosen", self._chosen), ("rejected", self._rejected)):
        rows.append(encode_row(tokenizer, record["prompt"], record[name], seq_len,
                               where=f"{file}:{line_number}: the {name!r} response"))
    self.num_items = len(self._chosen)
    self.what = (f"pairs of data.path={path!r}, {split} split (the last "
                 f"val_fraction={val_fraction} of its records are validation)")

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return pack_pairs([self._chosen[i] for i in indices], [self._rejected[i] for i in indices],
                      self._seq_len)


def encode_row(tokenizer: Tokenizer, prompt: str, response: str, seq_len: int, *,
               where: str) -> list[int]:
  """[BOS] + prompt + response + [EOS] as tokens (each marker where the tokenizer has one), the
  prompt cut from the left to fit seq_len. A response that does not fit even with an empty prompt
  is a ValueError naming `where` (e.g. "prefs.jsonl:3: the 'chosen' response")."""
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
  prompt_ids, response_ids = tokenizer.encode(prompt), tokenizer.encode(response)
  fixed = len(bos) + len(response_ids) + len(eos)
  if fixed > seq_len:
    raise ValueError(f"{where} takes {fixed} tokens with its BOS/EOS, more than "
                     f"seq_len={seq_len}; only prompts are truncated")
  keep = seq_len - fixed
  return bos + prompt_ids[len(prompt_ids) - min(keep, len(prompt_ids)):] + response_ids + eos


def _records(file: pathlib.Path):
  """(line number, record) of every non-blank line."""
  for line_number, record in jsonl_records(file):
    missing = [k for k in FIELDS if not isinstance(record, dict)
               or not isinstance(record.get(k), str)]
    if missing:
      raise ValueError(f"{file}:{line_number}: expected string fields {list(FIELDS)}; "
                       f"missing or not a string: {missing}")
    yield line_number, record


def make_preference_dataset(data_cfg, *, split: str, seq_len: int, batch_size: int, seed: int,
                            process_index: int = 0, process_count: int = 1) -> Dataset:
  """This process's iterator of preference batches (the format above), from the source that
  `data_cfg.source` names; arguments as lloglin.data.make_dataset."""
  check_arguments(split, seq_len, batch_size, seed, process_index, process_count)
  if data_cfg.source == "synthetic_preferences":
    source = SyntheticPreferences(data_cfg.preferences, split=split, seq_len=seq_len, seed=seed)
    tokenizer, vocab_size = None, data_cfg.preferences.vocab_size
  elif data_cfg.source == "preference_jsonl":
    tokenizer = make_tokenizer(data_cfg)
    source = JsonlPreferences(data_cfg.path, tokenizer, split=split, seq_len=seq_len,
                              val_fraction=data_cfg.val_fraction)
    vocab_size = tokenizer.vocab_size
  else:
    raise ValueError(f"data.source={data_cfg.source!r} has no preference pairs; the reward task "
                     f"expects one of {SOURCES}")
  return Dataset(source, batch_size=batch_size, shuffle=split == "train", seed=seed,
                 process_index=process_index, process_count=process_count,
                 vocab_size=vocab_size, tokenizer=tokenizer)

