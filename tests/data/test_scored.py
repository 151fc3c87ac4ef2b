"""Scored records (lloglin/data/scored.py): the JSONL loader's rows, scores and paraphrases, and
every bad record named by file and line."""

import json

import numpy as np
import pytest

from lloglin.data.scored import make_pair_dataset, make_scored_dataset
from lloglin.data.tokenizers import ByteTokenizer

SEQ_LEN = 16


def _write(data_cfg, tmp_path, lines, val_fraction=0.0):
  path = tmp_path / "scored.jsonl"
  path.write_bytes(b"\n".join(line if isinstance(line, bytes) else json.dumps(line).encode()
                              for line in lines) + b"\n")
  data_cfg.source, data_cfg.path, data_cfg.val_fraction = "scored_jsonl", str(path), val_fraction
  return data_cfg


def _record(i, **fields):
  return {"prompt": f"Q{i}:", "response": "yes", "score": i / 2, **fields}


def _unpad(batch, name, b):
  n = int(batch[f"{name}_segment_ids"][b].sum())
  assert (batch[f"{name}_segment_ids"][b, n:] == 0).all() and (batch[name][b, n:] == 0).all()
  return batch[name][b, :n].tolist()


def test_rows_scores_paraphrases_and_the_validation_tail(data_cfg, tmp_path):
  cfg = _write(data_cfg, tmp_path, [_record(i, paraphrase="yep") for i in range(4)],
               val_fraction=0.25)
  tok = ByteTokenizer()
  val = next(make_scored_dataset(cfg, split="validation", seq_len=SEQ_LEN, batch_size=1, seed=0))
  assert _unpad(val, "response", 0) == [tok.bos_id, *tok.encode("Q3:yes"), tok.eos_id]
  assert _unpad(val, "paraphrase", 0) == [tok.bos_id, *tok.encode("Q3:yep"), tok.eos_id]
  assert val["score"].dtype == np.float32 and val["score"].tolist() == [1.5]
  train = make_scored_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=3, seed=0)
  batch = next(train)
  assert train.items_per_epoch == 3 and sorted(batch["score"].tolist()) == [0.0, 0.5, 1.0]
  without = _write(data_cfg, tmp_path, [_record(0, paraphrase="yep"), _record(1)])
  batch = next(make_scored_dataset(without, split="train", seq_len=SEQ_LEN, batch_size=2, seed=0))
  assert "paraphrase" not in batch  # some records have none, and none is required


@pytest.mark.parametrize("line, message", [
    (_record(0, response=None), r"'response' is missing; expected a string"),
    ({"prompt": "p", "response": "r"}, r"field 'score' is None; expected a finite number"),
    (_record(0, score="4"), r"field 'score' is '4'; expected a finite number"),
    (_record(0, score=True), r"field 'score' is True"),
    (b'{"prompt": "p", "response": "r", "score": NaN}', r"field 'score' is nan"),
    (_record(0, response=""), r"field 'response' is an empty string"),
    (_record(0, paraphrase=""), r"field 'paraphrase' is an empty string"),
    (b'{"prompt": "p\xff", "response": "r", "score": 1}', r"field 'prompt' is not valid UTF-8"),
    (b'["p", "r", 1]', r"expected a JSON object .* got list"),
    (_record(0, response="r" * 15), r"the 'response' field takes 17 tokens .* seq_len=16"),
])
def test_bad_records_name_the_file_and_line(data_cfg, tmp_path, line, message):
  cfg = _write(data_cfg, tmp_path, [_record(0), line])
  with pytest.raises(ValueError, match=r"scored.jsonl:2: .*" + message):
    next(make_scored_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=1, seed=0))


def test_paraphrases_required_of_every_record_and_sources_named(data_cfg, tmp_path):
  cfg = _write(data_cfg, tmp_path, [_record(0, paraphrase="yep"), _record(1)])
  with pytest.raises(ValueError, match=r"scored.jsonl:2: field 'paraphrase' is missing.*"
                                       "consistency_alpha"):
    make_scored_dataset(cfg, split="train", seq_len=SEQ_LEN, batch_size=1, seed=0,
                        paraphrases=True)
  kw = dict(split="train", seq_len=SEQ_LEN, batch_size=1, seed=0)
  with pytest.raises(ValueError, match=r"data.source='scored_jsonl' has no preference pairs.*"
                                       "reward_world"):
    make_pair_dataset(cfg, **kw)
  cfg.source = "synthetic_preferences"
  with pytest.raises(ValueError, match="has no paraphrases"):
    make_pair_dataset(cfg, paraphrases=True, **kw)
  with pytest.raises(ValueError, match=r"has no scored records.*'scored_jsonl'"):
    make_scored_dataset(cfg, **kw)
  cfg.source, cfg.path = "scored_jsonl", str(tmp_path / "nope.jsonl")
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    make_scored_dataset(cfg, **kw)
