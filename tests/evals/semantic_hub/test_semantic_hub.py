"""The semantic_hub suite in-process: configs/semantic_hub.py:tiny trains its own model on the
multilingual world and analyses it; its export then stands in for a real model read through
paired text files; bad input is refused before any analysis."""

import json

import numpy as np
import pytest

from configs.semantic_hub import get_config
from lloglin import evals
from lloglin.data import multilingual as world

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
  """(out_dir, report) of the tiny variant without a checkpoint: trains into out_dir/train."""
  out = tmp_path_factory.mktemp("semantic_hub")
  return out, evals.run_suite("semantic_hub", get_config("tiny"), out_dir=str(out))


def test_tiny_run_trains_its_model_and_reports_every_measure(hub_run):
  out, report = hub_run
  saved = json.loads((out / "report.json").read_text())
  assert saved["figures"] == ["logit_lens.png", "similarity.png", "steering.png"]
  assert all((out / f).read_bytes()[:8] == PNG for f in saved["figures"])
  assert (out / "train" / "export").is_dir() and saved["config"]["semantic_hub"]["num_pairs"] == 16
  [(label, r)] = saved["results"]["models"].items()
  assert label == "attention" and r["num_layers"] == 2
  for kind in ("language", "arithmetic"):
    sim = {k: np.asarray(v) for k, v in r["similarity"][kind].items()}
    assert sim["adjusted"].shape == (3,) and (np.abs(sim["paired"]) <= 1 + 1e-9).all()
    np.testing.assert_allclose(sim["adjusted"], sim["paired"] - sim["shuffled"], atol=1e-12)
  for part in ("minor_input", "arithmetic"):
    for norm in ("final_norm", "raw"):
      lens = r["lens"][part][norm]
      total = sum(np.asarray(v) for v in lens["share"].values())  # all but BOS / EOS
      assert total.shape == (3,) and ((0.5 < total) & (total <= 1 + 1e-6)).all()
      p = np.asarray(lens["target_probability"])
      assert p.shape == (3, 2) and ((0 < p) & (p < 1)).all()
  st = r["steering"]
  assert st["layers"] == [1] and len(st["stream_norm"]) == 3
  rows = {(row["source"], row["strength"]) for row in st["table"]}
  assert rows == {(s, x) for s in ("activations", "unembedding", "random") for x in (0.0, 2.0)}
  for row in st["table"]:
    assert 0 <= row["minor_share"] <= 1 and row["adjectives"] >= 0


def _write_pairs(tmp_path, pairs):
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("\n".join(x for x, _ in pairs) + "\n")
  b.write_text("\n".join(y for _, y in pairs) + "\n")
  return str(a), str(b)


def test_paired_files_and_several_checkpoints(hub_run, tmp_path):
  """The world's own pairs as files give the world run's Eq. 1; two checkpoints, two curves."""
  out, report = hub_run
  export = str(out / "train" / "export")
  config = get_config("tiny")
  s = config.semantic_hub
  s.pairs_a, s.pairs_b = _write_pairs(tmp_path, world.parallel_pairs("language", 16, seed=s.seed))
  s.compare, s.labels = export, "first,second"
  got = evals.run_suite("semantic_hub", config, checkpoint=export, out_dir=str(tmp_path / "o"))
  assert got["figures"] == ["logit_lens.png", "similarity.png"]
  models = got["results"]["models"]
  assert list(models) == ["first", "second"]
  world_sim = report["results"]["models"]["attention"]["similarity"]["language"]
  for label in models:
    np.testing.assert_allclose(models[label]["similarity"]["pairs"]["adjusted"],
                               world_sim["adjusted"], rtol=1e-6)
    shares = models[label]["lens"]["b_input"]["final_norm"]["share"]
    assert set(shares) == {"a", "b"} and shares["b"].shape == (3,)


@pytest.mark.parametrize("settings, match", [
    (dict(pairs="unequal"), r"paired files of unequal length: .*a.txt' has 3 lines, .*b.txt' "
                            r"has 2"),
    (dict(tokenizer="byte"), r"semantic_hub.tokenizer='byte': its vocabulary of 258 tokens does "
                             r"not match .*model vocab_size 147"),
    (dict(steer_layers=(0, 3)), r"semantic_hub.steer_layers=\(0, 3\): layer\(s\) \[3\] out of "
                                r"range .*\(2 layers: 0..2"),
    (dict(pool="first"), r"semantic_hub.pool='first'; expected 'last' or 'mean'"),
])
def test_bad_input_is_refused_before_any_analysis(hub_run, tmp_path, settings, match):
  out, _ = hub_run
  config = get_config("tiny")
  s = config.semantic_hub
  if settings.pop("pairs", None):
    s.pairs_a, s.pairs_b = _write_pairs(tmp_path, [("a", "b"), ("c", "d"), ("e", "f")])
    (tmp_path / "b.txt").write_text("b\nd\n")
  s.update(settings)
  with pytest.raises(ValueError, match=match):
    evals.run_suite("semantic_hub", config, checkpoint=str(out / "train" / "export"),
                    out_dir=str(tmp_path / "o"))
  assert not (tmp_path / "o" / "report.json").exists()
