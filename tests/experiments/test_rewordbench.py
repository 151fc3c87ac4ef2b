"""The reWordBench experiment's bookkeeping (experiments/rewordbench.py): the unseen set is
disjoint from the seen one and made of registered transforms; per-run summaries, the mean and
spread over seeds, and the table, on hand-written suite results. (The training and the suite run
end to end in notebooks/rewordbench.py, which the notebook test executes.)"""

import pytest

from experiments import rewordbench as exp
from lloglin.evals.rewordbench.transforms import TRANSFORMS


def _results(clean: float, drops: dict[str, float]) -> dict:
  """The suite's results as far as summarize_run reads them."""
  row = lambda before, drop: {"overall": {"accuracy_before": before, "drop": drop}}
  return {"original": {"overall": {"accuracy_before": clean},
                       "Chat Hard": {"accuracy_before": clean - 0.1}},
          "transforms": {n: {"metrics": row(clean, d)} for n, d in drops.items()}
          | {"paraphrase": {"applicable": 3, "kept": 0}}}  # no metrics: every rewrite filtered


def test_transform_sets():
  assert not set(exp.SEEN) & set(exp.UNSEEN)
  assert set(exp.NOISE) <= set(exp.UNSEEN)
  assert all(TRANSFORMS[n].fn is not None and TRANSFORMS[n].subsets is None
             for n in exp.SEEN + exp.UNSEEN)  # pure and applicable to every world subset


def test_summaries_mean_spread_and_table():
  drops = {n: 0.0 for n in exp.SEEN + exp.UNSEEN}
  seed0 = exp.summarize_run(_results(0.9, drops | {"rot13": 0.39, "char_swap": 0.05,
                                                   "add_quotes": 0.2}))
  seed1 = exp.summarize_run(_results(0.8, drops | {"rot13": 0.13}))
  assert seed0["mean_drop_unseen"] == pytest.approx((0.39 + 0.05) / len(exp.UNSEEN))
  assert seed0["mean_drop_noise"] == pytest.approx(0.05 / len(exp.NOISE))
  assert seed0["mean_accuracy_unseen"] == pytest.approx(0.9 - seed0["mean_drop_unseen"])
  assert seed0["mean_drop_seen"] == pytest.approx(0.1)
  assert "paraphrase" not in seed0["drops"]
  summary = exp.aggregate({"reg1": {0: seed0, 1: seed1}})["reg1"]
  assert summary["clean_accuracy"] == pytest.approx({"mean": 0.85, "spread": 0.05})
  assert summary["drops"]["rot13"] == pytest.approx({"mean": 0.26, "spread": 0.13})
  text = exp.table({"reg1": {0: seed0, 1: seed1}}, {"reg1": summary})
  assert "| reg1 | 85.0 (90.0 / 80.0) |" in text


@pytest.mark.parametrize("argv", [["--jobs", "0"], ["--steps", "-1"], ["--seeds", "0,x"],
                                  ["--variants", "pretrain"]])
def test_bad_arguments_stop_before_any_run(argv, tmp_path, capsys):
  with pytest.raises(SystemExit):
    exp.main(argv + ["--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
  assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
  assert argv[0] in capsys.readouterr().err


def test_merge_writes_one_report_of_earlier_reports(tmp_path):
  """--merge: the variants of two reports (separate commands) in one table and report; a variant
  in both is refused before anything is written."""
  drops = {n: 0.1 for n in exp.SEEN + exp.UNSEEN}
  paths = []
  for variant, clean in (("standard", 0.9), ("augment", 0.8)):
    runs = {variant: {s: exp.summarize_run(_results(clean, drops)) for s in (0, 1)}}
    exp.write_results(runs, str(tmp_path / variant), "config")
    paths.append(str(tmp_path / variant / "report.json"))
  exp.main(["--merge", ",".join(paths), "--out", str(tmp_path / "all")])
  text = (tmp_path / "all" / "table.md").read_text()
  assert "| standard | 90.0 (90.0 / 90.0) |" in text and "| augment | 80.0 (80.0 / 80.0) |" in text
  assert (tmp_path / "all" / "drop.png").exists()
  with pytest.raises(ValueError, match="'standard' is in more than one report"):
    exp.merge([paths[0], paths[0]], str(tmp_path / "twice"))
  assert not (tmp_path / "twice").exists()
