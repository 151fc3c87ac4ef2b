"""train.py and eval.py as a user runs them: errors on bad input, eval outputs, the reward task
(two processes: tests/parallel/test_train_mesh.py)."""

import json

import pytest

from tests.helpers import run_script as run

TINY = ["--config", "configs/mqar.py:tiny"]


@pytest.mark.parametrize("override, message", [
    ("--config.model.dmodel=3", "dmodel"),
    ("--config.train.num_steps=many", "num_steps"),
    ("--config.seq_len=4", "seq_len"),
])
def test_bad_config_values_are_named(tmp_path, override, message):
  result = run("train.py", *TINY, f"--workdir={tmp_path}", override)
  assert result.returncode != 0
  assert message in result.stderr


def test_unknown_key_error_lists_the_valid_keys(tmp_path):
  result = run("train.py", *TINY, f"--workdir={tmp_path}", "--config.train.num_step=3")
  assert result.returncode != 0
  assert "num_step" in result.stderr and "num_steps" in result.stderr


def test_missing_and_empty_text_data_are_named(tmp_path):
  missing = tmp_path / "nope.txt"
  result = run("train.py", *TINY, f"--workdir={tmp_path / 'w1'}", "--config.data.source=text",
               f"--config.data.path={missing}")
  assert result.returncode != 0 and str(missing) in result.stderr
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  result = run("train.py", *TINY, f"--workdir={tmp_path / 'w2'}", "--config.data.source=text",
               f"--config.data.path={empty}")
  assert result.returncode != 0 and "empty" in result.stderr.lower()


@pytest.mark.slow
def test_eval_with_todays_flags_from_the_workdir_alone(tiny_lm_run, tmp_path):
  """`eval.py --checkpoint DIR` plus the lm shorthand flags: the lm suite on configs/lm.py."""
  out = tmp_path / "eval"
  result = run("eval.py", f"--checkpoint={tiny_lm_run}", f"--out={out}", "--num_batches=2",
               "--prompt=the quick", "--max_new_tokens=8", "--temperature=0.7", "--top_k=5")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.load(open(out / "report.json"))
  assert report["suite"] == "lm" and report["checkpoint"] == str(tiny_lm_run)
  flagged = {"num_batches": 2, "prompt": "the quick", "max_new_tokens": 8, "temperature": 0.7,
             "top_k": 5}
  assert {k: report["config"][k] for k in flagged} == flagged
  results = report["results"]
  assert results["eval_perplexity"] > 1 and len(results["eval_loss_per_position"]) == 32
  assert 1 <= len(results["generation"]["tokens"]) <= 8
  assert report["figures"] == ["per_position_loss.png"]
  assert (out / "per_position_loss.png").stat().st_size > 1000


def test_eval_names_an_unknown_suite_and_the_known_ones():
  result = run("eval.py", "--suite", "nope", timeout=120)
  assert result.returncode != 0
  assert "unknown suite 'nope'; known suites:" in result.stderr and "lm" in result.stderr


@pytest.mark.slow
def test_reward_task_trains_and_resumes_through_train_py(tmp_path):
  args = ["--config", "configs/reward.py:tiny", f"--workdir={tmp_path}"]
  result = run("train.py", *args, "--config.train.num_steps=10")
  assert result.returncode == 0, result.stderr[-3000:]
  result = run("train.py", *args, "--config.train.num_steps=14")  # the same run, continued
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from step 10" in result.stderr
  final = json.loads(result.stdout[result.stdout.index("{"):])["final"]
  assert 0 <= final["eval_accuracy"] <= 1 and final["eval_pairs"] == 32
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records if "margin" in r] == [5, 10, 14]
  assert json.load(open(tmp_path / "export" / "config.json"))["task"] == "reward"
  result = run("eval.py", f"--checkpoint={tmp_path}")  # the lm suite refuses a reward model
  assert result.returncode != 0 and "task 'reward'" in result.stderr
