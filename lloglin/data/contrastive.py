"""Image-text data for the contrastive task (lloglin.training.tasks.contrastive): records, their
word-level tokenisation, batches, and the built-in `toy_pairs` source.

Record format (`ImageTextRecord`), what every image-text source produces:
- image: float32 array [H, W, C] with values in [0, 1] (every record of a source the same shape);
- caption: str, the text paired with the image (a non-empty sentence of the source's words);
- options: tuple of str, optional: the image's multiple-choice options (NegBench's MCQ: one
  correct description and distractors); either every record of a source has options, the same
  number K >= 2 of them, or none has;
- answer: int, the index of the correct option (None without options).

Text is lower-cased and split into words and punctuation marks (`words_of`: "There is no dog."
-> there, is, no, dog, .); each word is one token of a WordTokenizer whose vocabulary is
<pad>, <bos>, <eos> and then the source's words (`ImageTextData.words`), fixed per source so that
every split and seed share the ids. A text row is its word ids followed by <eos>, the end-of-text
token at position length - 1 where the dual encoder reads the text (lloglin.models.dual_encoder),
right-padded with <pad> (id 0) to seq_len; a text longer than seq_len - 1 words is a ValueError
naming the record (cutting it would drop words such as a trailing "no dog").

Batches map "images" (float32 [B, H, W, C]), "tokens" (int32 [B, seq_len]) and "lengths" (int32
[B]); with options also "option_tokens" (int32 [B, K, seq_len]), "option_lengths" (int32 [B, K])
and "answer" (int32 [B]). The iterator is lloglin.data.Dataset (deterministic per seed,
resumable by get_state() / set_state(), each process its own share of the items).

`data.source` names the source: a function (data_cfg, *, split, seed) -> ImageTextData in
`SOURCES` (`register_source` adds one). Built in: "toy_pairs", images of one coloured square
each, captioned with its colour (`toy_pairs`).
"""

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np

from lloglin.data.dataset import Dataset, check_arguments
from lloglin.data.sections import section_fields
from lloglin.data.tokenizers import WordTokenizer

SPECIAL_WORDS = ("<pad>", "<bos>", "<eos>")
PAD_ID = 0
_WORD = re.compile(r"[a-z0-9']+|[^a-z0-9'\s]")
_TOY_STREAM = 0x544F59  # keeps toy_pairs' generator seeds apart from others'


@dataclasses.dataclass(frozen=True)
class ImageTextRecord:
  """One image with its caption and, optionally, its multiple-choice options (module
  docstring)."""
  image: np.ndarray
  caption: str
  options: tuple[str, ...] = ()
  answer: int | None = None


@dataclasses.dataclass(frozen=True)
class ImageTextData:
  """A source's records of one split, and the words its texts are made of (the vocabulary, the
  same for every split and seed of the source)."""
  records: Sequence[ImageTextRecord]
  words: Sequence[str]
  what: str  # what the records are, for messages ("toy_pairs train records")


def words_of(text: str) -> list[str]:
  """The words and punctuation marks of `text`, lower-cased: the units of the tokenizer."""
  return _WORD.findall(text.lower())


def make_word_tokenizer(words: Sequence[str]) -> WordTokenizer:
  """The tokenizer of a source's words: <pad> = 0, <bos>, <eos>, then `words` (duplicates and
  special words dropped, order kept)."""
  unique = list(dict.fromkeys(w for w in words if w not in SPECIAL_WORDS))
  return WordTokenizer(SPECIAL_WORDS + tuple(unique), bos="<bos>", eos="<eos>")


def encode_text(tokenizer: WordTokenizer, text: str, seq_len: int, *, where: str) -> list[int]:
  """Word ids of `text` and <eos> (at most seq_len ids), or a ValueError naming `where`."""
  if not isinstance(text, str) or not words_of(text):
    raise ValueError(f"{where}: expected a non-empty text, got {text!r}")
  try:
    ids = tokenizer.encode(" ".join(words_of(text)))
  except ValueError as e:
    raise ValueError(f"{where}: {e}; the source's words are its vocabulary") from None
  if len(ids) + 1 > seq_len:
    raise ValueError(f"{where}: {len(ids)} words and <eos> do not fit seq_len={seq_len} "
                     f"({text!r:.80}); raise seq_len")
  return ids + [tokenizer.eos_id]


def pad_rows(rows: Sequence[Sequence[int]], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [N, seq_len] padded with <pad>, lengths [N]) as int32."""
  tokens = np.full((len(rows), seq_len), PAD_ID, np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  return tokens, np.asarray([len(r) for r in rows], np.int32)


class ImageTextSource:
  """The records of an ImageTextData checked, tokenised and stacked into arrays; random access
  to batch rows (the Source protocol of lloglin.data.dataset). Bad records are ValueErrors
  naming the record."""

  def __init__(self, data: ImageTextData, tokenizer: WordTokenizer, *, seq_len: int):
    records = list(data.records)
    if not records:
      raise ValueError(f"{data.what}: no records")
    first = records[0]
    shape = np.shape(first.image)
    num_options = len(first.options)
    images, captions, options, answers = [], [], [], []
    for i, r in enumerate(records):
      where = f"{data.what}, record {i}"
      image = np.asarray(r.image)
      if image.ndim != 3 or image.shape != shape or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{where}: image of dtype {image.dtype} and shape {image.shape}; "
                         f"expected float [H, W, C] = {shape} like record 0")
      if not (np.all(image >= 0) and np.all(image <= 1)):
        raise ValueError(f"{where}: image values must lie in [0, 1], got [{image.min()}, "
                         f"{image.max()}]")
      images.append(image.astype(np.float32))
      captions.append(encode_text(tokenizer, r.caption, seq_len, where=f"{where}, caption"))
      if len(r.options) != num_options or num_options == 1:
        raise ValueError(f"{where}: {len(r.options)} options; expected {num_options} like "
                         "record 0 (every record K >= 2 options, or none)")
      if num_options:
        if isinstance(r.answer, bool) or not isinstance(r.answer, (int, np.integer)) or not (
            0 <= r.answer < num_options):
          raise ValueError(f"{where}: answer={r.answer!r}; expected an option index in "
                           f"[0, {num_options})")
        options.extend(encode_text(tokenizer, text, seq_len, where=f"{where}, option {k}")
                       for k, text in enumerate(r.options))
        answers.append(int(r.answer))
      elif r.answer is not None:
        raise ValueError(f"{where}: answer={r.answer!r} without options")
    self._images = np.stack(images)
    self._tokens, self._lengths = pad_rows(captions, seq_len)
    self.num_options = num_options
    if num_options:
      tokens, lengths = pad_rows(options, seq_len)
      self._option_tokens = tokens.reshape(len(records), num_options, seq_len)
      self._option_lengths = lengths.reshape(len(records), num_options)
      self._answers = np.asarray(answers, np.int32)
    self.num_items = len(records)
    self.what = data.what
    self.image_shape = shape

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = {"images": self._images[indices], "tokens": self._tokens[indices],
             "lengths": self._lengths[indices]}
    if self.num_options:
      batch.update(option_tokens=self._option_tokens[indices],
                   option_lengths=self._option_lengths[indices], answer=self._answers[indices])
    return batch


SOURCES: dict[str, Callable[..., ImageTextData]] = {}


def register_source(name: str, build: Callable[..., ImageTextData]) -> None:
  """Adds `data.source = name`: build(data_cfg, *, split, seed) -> ImageTextData."""
  if name in SOURCES:
    raise ValueError(f"image-text source {name!r} is already registered")
  SOURCES[name] = build


def make_contrastive_dataset(data_cfg, *, split: str, seq_len: int, batch_size: int, seed: int,
                             process_index: int = 0, process_count: int = 1,
                             require_options: bool = False) -> Dataset:
  """This process's iterator of image-text batches (module docstring) from the source
  `data_cfg.source`; "train" shuffles, "validation" keeps the records' order. Other arguments as
  lloglin.data.make_dataset; `require_options`: a source without options is a ValueError. Its
  `tokenizer` is the source's WordTokenizer."""
  check_arguments(split, seq_len, batch_size, seed, process_index, process_count)
  if data_cfg.source not in SOURCES:
    raise ValueError(f"data.source={data_cfg.source!r} has no image-text records; the "
                     f"contrastive task expects one of {sorted(SOURCES)}")
  data = SOURCES[data_cfg.source](data_cfg, split=split, seed=seed)
  tokenizer = make_word_tokenizer(data.words)
  source = ImageTextSource(data, tokenizer, seq_len=seq_len)
  if require_options and not source.num_options:
    raise ValueError(f"data.source={data_cfg.source!r}: its {data.what} have no options, which "
                     "contrastive.alpha < 1 (the MCQ loss) reads")
  return Dataset(source, batch_size=batch_size, shuffle=split == "train", seed=seed,
                 process_index=process_index, process_count=process_count,
                 vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)


# --- the built-in toy source

TOY_COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.1, 0.2, 1.0),
               "yellow": (1.0, 0.9, 0.1), "cyan": (0.1, 0.9, 0.9), "magenta": (0.9, 0.1, 0.9),
               "white": (1.0, 1.0, 1.0), "orange": (1.0, 0.55, 0.0)}


@dataclasses.dataclass(frozen=True)
class ToyPairsConfig:
  """`data.toy_pairs` (every field optional there)."""
  image_size: int = 16
  num_options: int = 4  # MCQ options per image (the correct colour and others); 0 = none
  num_train_examples: int = 2048
  num_val_examples: int = 256


def toy_pairs_config(data_cfg) -> ToyPairsConfig:
  cfg = ToyPairsConfig(**section_fields(data_cfg, "toy_pairs", ToyPairsConfig, "data.toy_pairs"))
  if not 4 <= cfg.image_size:
    raise ValueError(f"data.toy_pairs.image_size={cfg.image_size}; expected >= 4")
  if cfg.num_options == 1 or not 0 <= cfg.num_options <= len(TOY_COLOURS):
    raise ValueError(f"data.toy_pairs.num_options={cfg.num_options}; expected 0 or 2.."
                     f"{len(TOY_COLOURS)}")
  return cfg


def toy_pairs(data_cfg, *, split: str, seed: int) -> ImageTextData:
  """Images of one square of a random colour, size and place on a dark noisy background,
  captioned "a <colour> square ."; options (`num_options`): "a <c> square ." for the true colour
  and other colours, the true one at a random index. Deterministic per (seed, split)."""
  cfg = toy_pairs_config(data_cfg)
  n = cfg.num_train_examples if split == "train" else cfg.num_val_examples
  rng = np.random.default_rng([_TOY_STREAM, seed, int(split == "train")])
  names = list(TOY_COLOURS)
  S = cfg.image_size
  records = []
  for _ in range(n):
    c = int(rng.integers(len(names)))
    image = rng.uniform(0.0, 0.15, (S, S, 3)).astype(np.float32)
    side = int(rng.integers(S // 4, S // 2 + 1))
    y, x = rng.integers(0, S - side + 1, 2)
    image[y:y + side, x:x + side] = TOY_COLOURS[names[c]]
    caption = f"a {names[c]} square ."
    options, answer = (), None
    if cfg.num_options:
      others = rng.permutation([k for k in range(len(names)) if k != c])[:cfg.num_options - 1]
      answer = int(rng.integers(cfg.num_options))
      picked = list(others[:answer]) + [c] + list(others[answer:])
      options = tuple(f"a {names[k]} square ." for k in picked)
    records.append(ImageTextRecord(image, caption, options, answer))
  return ImageTextData(records, words=["a", "square", "."] + names,
                       what=f"toy_pairs {split} records")


register_source("toy_pairs", toy_pairs)
