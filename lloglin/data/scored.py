"""Reward-model data beyond plain pairs: scored records (pointwise regression) and pairs with
paraphrases, from a JSONL file or the reward world (lloglin.data.reward_world).

Scored batches map "response", "response_segment_ids" (int32, [batch, seq_len]) and "score"
(float32, [batch]); with paraphrases also "paraphrase", "paraphrase_segment_ids". Pair batches
are lloglin.data.preferences' ("chosen", "rejected" and their segment ids), with paraphrases also
"chosen_paraphrase", "rejected_paraphrase" and their segment ids. Every row is [BOS] + prompt +
response + [EOS] (`encode_row`: the prompt cut from the left to fit), right-padded with segment
id 0 (the padding convention of lloglin.models.reward); a paraphrase row has the same prompt.

`data.source` picks the data:
- "reward_world": the synthetic world of data.reward_world, as records or as pairs;
- "scored_jsonl": records {"prompt", "response", "score"} (HelpSteer2-like; an optional
  "paraphrase" of the response) of the .jsonl file data.path, text through the configured
  tokenizer; the last ceil(val_fraction * records) records are the validation split;
- for pairs, also the sources of lloglin.data.preferences (which have no paraphrases).
"""

import math
import pathlib

import numpy as np

from lloglin.data import preferences, reward_world
from lloglin.data.dataset import Dataset, check_arguments
from lloglin.data.text import jsonl_records
from lloglin.data.tokenizers import Tokenizer, make_tokenizer

SCORED_SOURCES = ("reward_world", "scored_jsonl")
PAIR_SOURCES = ("reward_world",) + preferences.SOURCES
TEXT_FIELDS = ("prompt", "response")


class ScoredJsonl:
  """Records of a .jsonl file of {"prompt": str, "response": str, "score": number} objects, with
  an optional "paraphrase": str (required of every record when `paraphrases`; the batches hold
  paraphrase rows when every record has one). Strings must be non-empty and valid UTF-8 (a
  U+FFFD replacement character is taken for bytes that were not), the score a finite number;
  the first record that is not is a ValueError naming the file and line."""

  def __init__(self, path: str, tokenizer: Tokenizer, *, split: str, seq_len: int,
               val_fraction: float, paraphrases: bool):
    if not path:
      raise ValueError("data.source='scored_jsonl' needs data.path, a .jsonl file of "
                       "{'prompt', 'response', 'score'} records; got ''")
    file = pathlib.Path(path)
    if not file.is_file():
      raise FileNotFoundError(f"data.path={path!r}: no such file")
    if not 0 <= val_fraction < 1:
      raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1)")
    records = [(line, _checked(record, f"{file}:{line}", paraphrases))
               for line, record in jsonl_records(file)]
    if not records:
      raise ValueError(f"data.path={path!r} holds no records")
    cut = len(records) - math.ceil(len(records) * val_fraction)
    with_paraphrases = paraphrases or all("paraphrase" in record for _, record in records)
    rows: dict[str, list] = {"response": []} | ({"paraphrase": []} if with_paraphrases else {})
    scores = []
    for line, record in records[:cut] if split == "train" else records[cut:]:
      for name, rows_of in rows.items():
        rows_of.append(preferences.encode_row(
            tokenizer, record["prompt"], record[name], seq_len,
            where=f"{file}:{line}: the {name!r} field"))
      scores.append(float(record["score"]))
    self._rows, self._scores, self._seq_len = rows, np.asarray(scores, np.float32), seq_len
    self.num_items = len(scores)
    self.what = (f"scored records of data.path={path!r}, {split} split (the last "
                 f"val_fraction={val_fraction} of its records are validation)")

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = preferences.pack_rows({name: [rows[i] for i in indices]
                                   for name, rows in self._rows.items()}, self._seq_len)
    batch["score"] = self._scores[indices]
    return batch


def _checked(record, where: str, paraphrases: bool) -> dict:
  """The record, or a ValueError naming `where` and what is wrong with it."""
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object with fields prompt, response, score; "
                     f"got {type(record).__name__}")
  fields = TEXT_FIELDS + (("paraphrase",) if paraphrases or "paraphrase" in record else ())
  for name in fields:
    value = record.get(name)
    if not isinstance(value, str):
      got = "missing" if value is None else repr(value)
      raise ValueError(f"{where}: field {name!r} is {got}; expected a string" + (" (reward.consistency_alpha > 0 or "
                                              "reward.augmentation reads the paraphrase of every "
                                              "record)" if name == "paraphrase" else ""))
    if not value:
      raise ValueError(f"{where}: field {name!r} is an empty string")
    if "\ufffd" in value:
      raise ValueError(f"{where}: field {name!r} is not valid UTF-8 (it holds U+FFFD, the "
                       "replacement character for bytes that are not)")
  score = record.get("score")
  if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
    raise ValueError(f"{where}: field 'score' is {score!r}; expected a finite number")
  return record


class WorldSource:
  """The reward world's `split` as scored records (record i: side i % 2 of pair i // 2) or as
  pairs, with their paraphrases (the `paraphrases` rows are always there: they are cheap)."""

  def __init__(self, data_cfg, tokenizer: Tokenizer, *, split: str, seq_len: int, seed: int,
               form: str):
    world = data_cfg.reward_world
    reward_world.check_world_config(world)
    self._world, self._tokenizer, self._seq_len = world, tokenizer, seq_len
    self._split, self._seed, self._form = split, seed, form
    pairs = world.num_train_examples if split == "train" else world.num_val_examples
    self.num_items = pairs * (2 if form == "records" else 1)
    self.what = f"reward world {split} {form}"

  def _encode(self, prompt: str, response: str, where: str) -> list[int]:
    return preferences.encode_row(self._tokenizer, prompt, response, self._seq_len, where=where)

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    per_pair = 2 if self._form == "records" else 1
    rows: dict[str, list] = {}
    scores = []
    for i in indices:
      pair = reward_world.world_pair(self._world, split=self._split, seed=self._seed,
                                     index=int(i) // per_pair)
      where = f"reward world {self._split} pair {int(i) // per_pair}:"
      if self._form == "records":
        side = ("chosen", "rejected")[int(i) % 2]
        named = {"response": getattr(pair, side), "paraphrase": getattr(pair, f"{side}_paraphrase")}
        scores.append(getattr(pair, f"{side}_score"))
      else:
        named = {name: getattr(pair, name) for name in
                 ("chosen", "rejected", "chosen_paraphrase", "rejected_paraphrase")}
      for name, text in named.items():
        rows.setdefault(name, []).append(self._encode(pair.prompt, text, f"{where} {name!r}"))
    batch = preferences.pack_rows(rows, self._seq_len)
    if self._form == "records":
      batch["score"] = np.asarray(scores, np.float32)
    return batch


def _dataset(source, tokenizer, *, split, batch_size, seed, process_index,
             process_count) -> Dataset:
  return Dataset(source, batch_size=batch_size, shuffle=split == "train", seed=seed,
                 process_index=process_index, process_count=process_count,
                 vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)


def make_scored_dataset(data_cfg, *, split: str, seq_len: int, batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        paraphrases: bool = False) -> Dataset:
  """This process's iterator of scored batches (the format above) from `data_cfg.source`;
  `paraphrases` requires paraphrase rows (the world always has them). Other arguments as
  lloglin.data.make_dataset."""
  check_arguments(split, seq_len, batch_size, seed, process_index, process_count)
  tokenizer = make_tokenizer(data_cfg)
  if data_cfg.source == "reward_world":
    source = WorldSource(data_cfg, tokenizer, split=split, seq_len=seq_len, seed=seed,
                         form="records")
  elif data_cfg.source == "scored_jsonl":
    source = ScoredJsonl(data_cfg.path, tokenizer, split=split, seq_len=seq_len,
                         val_fraction=data_cfg.val_fraction, paraphrases=paraphrases)
  else:
    raise ValueError(f"data.source={data_cfg.source!r} has no scored records; "
                     f"reward.objective='regression' expects one of {SCORED_SOURCES}")
  return _dataset(source, tokenizer, split=split, batch_size=batch_size, seed=seed,
                  process_index=process_index, process_count=process_count)


def make_pair_dataset(data_cfg, *, split: str, seq_len: int, batch_size: int, seed: int,
                      process_index: int = 0, process_count: int = 1,
                      paraphrases: bool = False) -> Dataset:
  """This process's iterator of preference batches: the reward world's pairs with their
  paraphrases, or lloglin.data.preferences' sources (`paraphrases` then is a ValueError: they
  have none). Other arguments as lloglin.data.make_dataset."""
  if data_cfg.source not in PAIR_SOURCES:
    raise ValueError(f"data.source={data_cfg.source!r} has no preference pairs; "
                     f"reward.objective='bradley_terry' expects one of {PAIR_SOURCES}")
  if data_cfg.source != "reward_world":
    if paraphrases:
      raise ValueError(f"data.source={data_cfg.source!r} has no paraphrases, which "
                       "reward.consistency_alpha > 0 or reward.augmentation read; pairs with "
                       "paraphrases come from data.source='reward_world'")
    return preferences.make_preference_dataset(
        data_cfg, split=split, seq_len=seq_len, batch_size=batch_size, seed=seed,
        process_index=process_index, process_count=process_count)
  check_arguments(split, seq_len, batch_size, seed, process_index, process_count)
  tokenizer = make_tokenizer(data_cfg)
  source = WorldSource(data_cfg, tokenizer, split=split, seq_len=seq_len, seed=seed,
                       form="pairs")
  return _dataset(source, tokenizer, split=split, batch_size=batch_size, seed=seed,
                  process_index=process_index, process_count=process_count)
