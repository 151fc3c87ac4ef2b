"""RewardBench-format loaders: the fixture in JSON Lines and parquet, and bad input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lloglin.evals.rewordbench.data import SUBSET_CATEGORY, load_records
from tests.evals.rewordbench.conftest import FIXTURE

GOOD = {"prompt": "p", "chosen": "c", "rejected": "r", "subset": "alpacaeval-easy"}


def test_jsonl_and_parquet_give_the_same_records(tmp_path):
  records = load_records(str(FIXTURE))
  assert len(records) == 13
  assert [r["category"] for r in records[:4]] == ["Chat", "Chat", "Chat", "Chat Hard"]
  assert records[10]["subset"] == "hep-python" and records[10]["category"] == "Reasoning"
  assert records[-1]["category"] == "Chat"  # its own subset, its own category
  path = tmp_path / "rb.parquet"
  raw = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
  columns = ("id", "prompt", "chosen", "rejected", "subset", "category")  # category: mostly null
  pq.write_table(pa.Table.from_pylist(raw, schema=pa.schema([(c, pa.string()) for c in columns])),
                 path)
  assert load_records(str(path)) == records  # ids from the file, so equal
  assert len(SUBSET_CATEGORY) == 23


def write_jsonl(path, lines: list[bytes]):
  path.write_bytes(b"\n".join(lines) + b"\n")
  return str(path)


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "p", "chosen": "c", "subset": "alpacaeval-easy"},
     r":2: expected a string field 'rejected'; got nothing"),
    (dict(GOOD, subset="my-subset"), r":2: subset='my-subset' is not a RewardBench subset and "
                                     r"the record has no 'category' field"),
    (dict(GOOD, subset="x", category="Maths"), r":2: category='Maths'; expected one of"),
    (dict(GOOD, chosen="  "), r":2: field 'chosen' is empty"),
    (dict(GOOD, prompt=3), r":2: expected a string field 'prompt'; got 3"),
], ids=["missing", "unknown subset", "bad category", "empty", "not a string"])
def test_bad_jsonl_records_name_the_line(tmp_path, bad, message):
  path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD).encode(), json.dumps(bad).encode()])
  with pytest.raises(ValueError, match=message):
    load_records(path)


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
  path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD).encode(),
                                            b'{"prompt": "caf\xe9", "chosen": "c"}'])
  with pytest.raises(ValueError, match=r"d.jsonl:2: not UTF-8 text"):
    load_records(path)
  surrogate = json.dumps(GOOD).replace('"c"', '"\\udcff"').encode()
  path = write_jsonl(tmp_path / "s.jsonl", [surrogate])
  with pytest.raises(ValueError, match=r"s.jsonl:1: field 'chosen' is not valid Unicode"):
    load_records(path)


def test_bad_parquet_rows_name_the_row(tmp_path):
  path = tmp_path / "d.parquet"
  table = pa.table({"prompt": [b"p", b"p"], "chosen": [b"c", b"\xff"], "rejected": [b"r", b"r"],
                    "subset": [b"donotanswer", b"donotanswer"]})
  pq.write_table(table, path)
  with pytest.raises(ValueError, match=r"d.parquet row 1: field 'chosen' is not UTF-8 text"):
    load_records(str(path))


def test_bad_paths(tmp_path):
  with pytest.raises(ValueError, match=r"data_path='x.csv': expected a .jsonl or .parquet file"):
    load_records("x.csv")
  with pytest.raises(FileNotFoundError, match="no such file"):
    load_records(str(tmp_path / "none.jsonl"))
  with pytest.raises(ValueError, match="holds no records"):
    load_records(write_jsonl(tmp_path / "empty.jsonl", [b""]))
  with pytest.raises(ValueError, match=r"e.jsonl:1: not a JSON record"):
    load_records(write_jsonl(tmp_path / "e.jsonl", [b"{oops"]))
