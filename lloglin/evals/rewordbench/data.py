"""RewardBench-format preference records: loading and checking.

A record is a dict with the non-empty strings `prompt`, `chosen`, `rejected` and `subset`, an
optional `id` and an optional `category`. The category of a RewardBench subset comes from
`SUBSET_CATEGORY` (the sections of RewardBench's own scoring); a record of another subset (the
synthetic world's, a user's) must carry its `category`, one of `CATEGORIES`.

`load_records(path)` reads a .jsonl file (one JSON object a line) or a .parquet file (one row a
record, through pyarrow). Every problem is a ValueError naming the file and the line (JSON Lines)
or row (parquet, counted from 0).
"""

import pathlib

from lloglin.data.text import jsonl_records

CATEGORIES = ("Chat", "Chat Hard", "Safety", "Reasoning")
SUBSETS = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy",
             "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor",
                  "llmbar-adver-GPTInst", "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
               "xstest-should-respond", "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python",
                  "hep-rust"),
}
SUBSET_CATEGORY = {subset: category for category, subsets in SUBSETS.items()
                   for subset in subsets}
TEXT_FIELDS = ("prompt", "chosen", "rejected", "subset")
SUFFIXES = (".jsonl", ".parquet")


def check_record(record, where: str) -> dict:
  """The record with its `category` (and `id`, default `where`) filled in; a bad record is a
  ValueError naming `where` (e.g. "data.jsonl:3")."""
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected an object with string fields {list(TEXT_FIELDS)}, got "
                     f"{type(record).__name__}")
  out = {k: v for k, v in record.items() if v is not None}  # parquet: None where a field is absent
  for field in TEXT_FIELDS + (("category",) if "category" in out else ()):
    value = out.get(field)
    if isinstance(value, bytes):
      try:
        value = out[field] = value.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{where}: field {field!r} is not UTF-8 text ({e})") from e
    if not isinstance(value, str):
      raise ValueError(f"{where}: expected a string field {field!r}; got "
                       f"{'nothing' if value is None else repr(value)[:60]}")
    if not value.strip():
      raise ValueError(f"{where}: field {field!r} is empty")
    try:
      value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, as JSON's "\udcff" makes
      raise ValueError(f"{where}: field {field!r} is not valid Unicode ({e})") from e
  if "category" in out:
    if out["category"] not in CATEGORIES:
      raise ValueError(f"{where}: category={out['category']!r}; expected one of {CATEGORIES}")
  elif out["subset"] in SUBSET_CATEGORY:
    out["category"] = SUBSET_CATEGORY[out["subset"]]
  else:
    raise ValueError(f"{where}: subset={out['subset']!r} is not a RewardBench subset and the "
                     f"record has no 'category' field; RewardBench subsets: "
                     f"{', '.join(SUBSET_CATEGORY)}")
  out.setdefault("id", where)
  return out


def load_records(path: str) -> list[dict]:
  """The checked records of a .jsonl or .parquet file (see the module docstring)."""
  file = pathlib.Path(path)
  if file.suffix not in SUFFIXES:
    raise ValueError(f"data_path={path!r}: expected a {' or '.join(SUFFIXES)} file")
  if not file.is_file():
    raise FileNotFoundError(f"data_path={path!r}: no such file")
  if file.suffix == ".jsonl":
    _check_utf8(file)
    records = [check_record(r, f"{file}:{line}") for line, r in jsonl_records(file)]
  else:
    import pyarrow.parquet as pq  # only parquet files need it

    records = [check_record(r, f"{file} row {i}")
               for i, r in enumerate(pq.read_table(file).to_pylist())]
  if not records:
    raise ValueError(f"data_path={path!r} holds no records")
  return records


def _check_utf8(file: pathlib.Path):
  """A ValueError naming the line of the first byte that is not UTF-8."""
  data = file.read_bytes()
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{file}:{data.count(b'\n', 0, e.start) + 1}: not UTF-8 text ({e.reason} "
                     f"at byte {e.start} of the file)") from e
