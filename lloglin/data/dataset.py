"""`make_dataset`: the deterministic, resumable batch iterator the training loop reads."""

import concurrent.futures
import multiprocessing
import operator
from typing import Protocol

import numpy as np

from lloglin.data import multilingual
from lloglin.data.arc_dsl import DslEpisodes
from lloglin.data.flipflop import VOCAB_SIZE as FLIPFLOP_VOCAB_SIZE
from lloglin.data.flipflop import FlipFlopExamples
from lloglin.data.mqar import MqarExamples
from lloglin.data.reward_world import world_text_source
from lloglin.data.text import TextWindows, make_text_source, tokenize_documents
from lloglin.data.tokenizers import Tokenizer, make_tokenizer

SPLITS = ("train", "validation")
SOURCES = ("mqar", "text", "flipflop", "multilingual", "reward_world", "arc_dsl")
_STREAM = 0x5348  # keeps the shuffling seeds apart from the MQAR example seeds


class Source(Protocol):
  """Random access to rows: `rows(indices)` gives each array as [len(indices), seq_len]."""

  num_items: int
  what: str  # what an item is, for error messages

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    ...


class WorkerRows:
  """`rows(indices)` of a source computed by `workers` processes, each holding its own copy of
  the source. A row is a pure function of its index, so the batch is the one a single process
  makes. For generated sources whose rows cost CPU time (arc_dsl episodes): on a GPU the data
  loop, not the device, would set the pace. Processes are spawned, not forked (the parent may
  hold JAX's threads), once, on first use."""

  def __init__(self, source: Source, workers: int):
    self.source, self.workers = source, workers
    self._pool = None

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    if self._pool is None:
      self._pool = concurrent.futures.ProcessPoolExecutor(
          self.workers, mp_context=multiprocessing.get_context("spawn"),
          initializer=_hold_source, initargs=(self.source,))
    parts = [p for p in np.array_split(indices, self.workers) if len(p)]
    done = list(self._pool.map(_worker_rows, parts))
    return {k: np.concatenate([d[k] for d in done]) for k in done[0]}


_WORKER_SOURCE = None  # a WorkerRows process's copy of the source


def _hold_source(source):
  global _WORKER_SOURCE
  _WORKER_SOURCE = source


def _worker_rows(indices):
  return _WORKER_SOURCE.rows(indices)


class Dataset:
  """An infinite iterator of batches, deterministic from its seed, resumable from its state.

  Epoch e visits the source's items in a fixed order: for training a permutation drawn from
  (seed, e), for validation the natural order. Process p of P takes every P-th item of that
  order, so processes read disjoint items, the same number per epoch (the remainder of the
  division is dropped for the epoch). The state is this process's position in the stream,
  {"epoch": e, "index": i}; a batch may run over an epoch boundary. `items_per_epoch` is the
  number of rows this process reads per epoch.
  """

  def __init__(self, source: Source, *, batch_size: int, shuffle: bool, seed: int,
               process_index: int, process_count: int, vocab_size: int,
               tokenizer: Tokenizer | None, num_workers: int = 0):
    self.items_per_epoch = source.num_items // process_count
    if self.items_per_epoch < 1:
      raise ValueError(f"{source.num_items} {source.what} cannot give each of "
                       f"process_count={process_count} processes at least one")
    self.vocab_size = vocab_size
    self.tokenizer = tokenizer
    self._source = source
    self._rows = WorkerRows(source, num_workers).rows if num_workers else source.rows
    self._batch_size = batch_size
    self._shuffle = shuffle
    self._seed = seed
    self._process_index = process_index
    self._process_count = process_count
    self._epoch = self._index = 0
    self._order_epoch, self._order = -1, np.zeros(0, np.int64)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    indices = np.empty(self._batch_size, np.int64)
    filled = 0
    while filled < self._batch_size:
      order = self._epoch_order()
      take = min(self._batch_size - filled, len(order) - self._index)
      indices[filled:filled + take] = order[self._index:self._index + take]
      filled += take
      self._index += take
      if self._index == len(order):
        self._epoch, self._index = self._epoch + 1, 0
    return self._rows(indices)

  def get_state(self) -> dict[str, int]:
    return {"epoch": self._epoch, "index": self._index}

  def set_state(self, state: dict[str, int]) -> None:
    """Restores a `get_state()` result (ints, or integer numpy scalars after a round trip)."""
    try:
      epoch, index = operator.index(state["epoch"]), operator.index(state["index"])
      valid = set(state) == {"epoch", "index"} and epoch >= 0 and 0 <= index < self.items_per_epoch
    except (KeyError, TypeError):
      valid = False
    if not valid:
      raise ValueError(f"data iterator state {state!r} is invalid; expected {{'epoch': e >= 0, "
                       f"'index': 0 <= i < {self.items_per_epoch}}}")
    self._epoch, self._index = epoch, index

  def _epoch_order(self) -> np.ndarray:
    """This process's items of the current epoch, in visiting order (cached for the epoch)."""
    if self._order_epoch != self._epoch:
      n = self._source.num_items
      order = (np.random.default_rng([_STREAM, self._seed, self._epoch]).permutation(n)
               if self._shuffle else np.arange(n))
      self._order = order[self._process_index::self._process_count][:self.items_per_epoch]
      self._order_epoch = self._epoch
    return self._order


def make_dataset(data_cfg, *, split: str, seq_len: int, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> Dataset:
  """The `split` ("train" shuffles, "validation" keeps a fixed order) of the data `data_cfg`
  describes (the `data` section of configs/base.py), as this process's iterator of batches.

  Each batch maps "inputs", "targets", "segment_ids", "positions" (int32) and "loss_mask"
  (float32) to [batch_size, seq_len] arrays; batch_size is this process's share of the batch.
  """
  check_arguments(split, seq_len, batch_size, seed, process_index, process_count)
  if data_cfg.source == "mqar":
    source = MqarExamples(data_cfg.mqar, split=split, seq_len=seq_len, seed=seed)
    tokenizer, vocab_size = None, data_cfg.mqar.vocab_size
  elif data_cfg.source == "flipflop":
    source = FlipFlopExamples(data_cfg.flipflop, split=split, seq_len=seq_len, seed=seed)
    tokenizer, vocab_size = None, FLIPFLOP_VOCAB_SIZE
  elif data_cfg.source == "arc_dsl":
    source = DslEpisodes(data_cfg.arc_dsl, split=split, seq_len=seq_len, seed=seed)
    tokenizer, vocab_size = source.tokenizer, source.tokenizer.vocab_size
  elif data_cfg.source == "text":
    tokenizer = make_tokenizer(data_cfg)
    source = make_text_source(data_cfg, tokenizer, split=split, seq_len=seq_len)
    vocab_size = tokenizer.vocab_size
  elif data_cfg.source == "reward_world":  # its texts (reward-model trunks pretrain on them)
    tokenizer = make_tokenizer(data_cfg)
    source = world_text_source(data_cfg, tokenizer, split=split, seq_len=seq_len, seed=seed)
    vocab_size = tokenizer.vocab_size
  elif data_cfg.source == "multilingual":
    tokenizer = make_tokenizer(data_cfg)
    documents = multilingual.documents(data_cfg.multilingual, split=split, seed=seed)
    source = TextWindows(*tokenize_documents(documents, tokenizer), seq_len,
                         f"the multilingual world's {split} documents")
    vocab_size = tokenizer.vocab_size
  else:
    raise ValueError(f"data.source={data_cfg.source!r} is unknown; expected one of {SOURCES}")
  workers = getattr(data_cfg, "num_workers", 0)
  if not isinstance(workers, int) or workers < 0:
    raise ValueError(f"data.num_workers={workers!r} must be a non-negative int")
  return Dataset(source, batch_size=batch_size, shuffle=split == "train", seed=seed,
                 process_index=process_index, process_count=process_count,
                 vocab_size=vocab_size, tokenizer=tokenizer, num_workers=workers)


def check_arguments(split, seq_len, batch_size, seed, process_index, process_count):
  """Raises ValueError naming the first make_dataset argument that is out of range."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")
  for name, value in [("seq_len", seq_len), ("batch_size", batch_size),
                      ("process_count", process_count)]:
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r} must be a positive int")
  if not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed={seed!r} must be a non-negative int")
  if not isinstance(process_index, int) or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index!r} must be an int in [0, "
                     f"process_count={process_count})")
