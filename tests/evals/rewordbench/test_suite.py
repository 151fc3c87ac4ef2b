"""The rewordbench suite end to end: in process with a user scorer, and as eval.py runs it with
the checkpoint's reward model."""

import json

import numpy as np
import pytest

from configs.rewordbench import get_config
from lloglin.evals import run_suite
from lloglin.evals.rewordbench.data import load_records
from lloglin.evals.rewordbench.suite import transform_names
from tests.evals.rewordbench.conftest import FIXTURE
from tests.helpers import run_script

PNG = b"\x89PNG\r\n\x1a\n"


def test_suite_with_a_user_scorer(tmp_path):
  config = get_config("tiny")
  config.rewordbench.data_path = str(FIXTURE)
  config.rewordbench.max_records = 0
  config.rewordbench.scorer = "tests.evals.rewordbench.scorers:length_scorer"
  config.rewordbench.transforms = ("add_quotes,code_minification", "swap_format", "paraphrase")
  report = run_suite("rewordbench", config, out_dir=str(tmp_path))
  saved = json.loads((tmp_path / "report.json").read_text())
  assert saved["results"] == json.loads(json.dumps(report["results"]))
  results = saved["results"]
  records = load_records(str(FIXTURE))
  longer = np.mean([len(r["chosen"]) > len(r["rejected"]) for r in records])
  assert results["num_records"] == 13
  assert results["original"]["overall"]["accuracy_before"] == pytest.approx(longer)
  t = results["transforms"]
  assert list(t) == ["add_quotes", "code_minification", "swap_format", "paraphrase"]
  assert [t[n]["applicable"] for n in t] == [13, 2, 1, 13]
  assert t["add_quotes"]["metrics"]["overall"]["drop"] == 0  # two characters on each response
  # minification strips the chosen code's comment: both hep pairs become ties or flip
  assert t["code_minification"]["metrics"]["Reasoning"]["flip_to_wrong"] == 1.0
  assert set(t["swap_format"]["metrics"]) == {"overall", "Reasoning"}
  assert t["paraphrase"]["kept"] <= 13 and t["paraphrase"]["family"] == "naturalistic"
  figures = ["drop_per_transform.png"] + [f"transform_{n}.png" for n in t]
  assert saved["figures"] == sorted(figures)
  assert all((tmp_path / f).read_bytes()[:8] == PNG for f in figures)


def test_config_variants_and_settings(tmp_path):
  assert get_config().rewordbench.transforms == ()
  names = transform_names(get_config().rewordbench)
  assert "rot13" in names and "paraphrase" in names and "back_translation" not in names
  with pytest.raises(ValueError, match="unknown .*variant 'huge' of configs/rewordbench.py"):
    get_config("huge")
  config = get_config("tiny")
  config.rewordbench.transforms = ("rot13", "rot_13")
  with pytest.raises(ValueError, match="unknown transform 'rot_13'; known transforms: add_quotes"):
    run_suite("rewordbench", config, out_dir=str(tmp_path))
  config.rewordbench.transforms = ()
  config.rewordbench.max_records = -1
  with pytest.raises(ValueError, match=r"rewordbench.max_records=-1; expected >= 0"):
    run_suite("rewordbench", config, out_dir=str(tmp_path))
  config.rewordbench.max_records = 0
  with pytest.raises(ValueError, match="checkpoint: rewordbench needs a trained run"):
    run_suite("rewordbench", config, out_dir=str(tmp_path))
  assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_eval_py_runs_rewordbench_on_a_reward_run(tiny_reward_run, tmp_path):
  out = tmp_path / "out"
  result = run_script("eval.py", "--suite", "rewordbench", "--config",
                      "configs/rewordbench.py:tiny", f"--checkpoint={tiny_reward_run}",
                      f"--out={out}", f"--config.rewordbench.data_path={FIXTURE}",
                      "--config.rewordbench.transforms=('rot13', 'jailbreak_roleplay')")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "rewordbench: rot13" in result.stderr  # the progress bar
  report = json.loads((out / "report.json").read_text())
  t = report["results"]["transforms"]
  assert report["results"]["num_records"] == 13 and list(t) == ["rot13", "jailbreak_roleplay"]
  assert t["jailbreak_roleplay"]["metrics"]["overall"]["n"] == 3  # the safety subsets
  assert report["figures"] == ["drop_per_transform.png", "transform_jailbreak_roleplay.png",
                               "transform_rot13.png"]


@pytest.mark.slow
def test_one_config_trains_and_evaluates(tmp_path):
  """configs/rewordbench.py:tiny trains a reward model on the reward world through train.py (here
  with the augmentation term), and the same config evaluates it on the world's held-out pairs."""
  work = tmp_path / "run"
  result = run_script("train.py", "--config", "configs/rewordbench.py:tiny", f"--workdir={work}",
                      "--config.train.num_steps=4", "--config.train.eval_every=4",
                      "--config.reward.augmentation=True")
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads(result.stdout[result.stdout.index("{"):])["final"]
  assert {"mse", "mse_paraphrase", "eval_correlation", "eval_consistency"} <= set(final)
  np.testing.assert_allclose(final["loss"], final["mse"] + final["mse_paraphrase"], rtol=1e-5)
  config = get_config("tiny")
  config.rewordbench.transforms = ("punct_spaces", "add_quotes")
  results = run_suite("rewordbench", config, checkpoint=str(work),
                      out_dir=str(tmp_path / "eval"))["results"]
  assert results["num_records"] == config.rewordbench.max_records
  assert "synthetic_world_test_pairs" in results["data"]
  categories = set(results["original"]) - {"overall"}
  assert categories and categories <= {"Chat", "Chat Hard", "Safety", "Reasoning"}
  assert list(results["transforms"]) == ["punct_spaces", "add_quotes"]
