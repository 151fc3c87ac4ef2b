"""train.py and eval.py as a user runs them: errors on bad input, eval outputs, the reward task,
two processes."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT, run_script as run

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


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_together(tmp_path):
  port = _free_port()
  args = [*TINY, f"--workdir={tmp_path}", "--config.train.num_steps=6",
          f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "train.py", *args, f"--process_id={i}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=150) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "process 0 of 2 processes" in outs[0][1]
  assert "process 1 of 2 processes" in outs[1][1]
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert max(r["step"] for r in records) == 6
  assert "6" in os.listdir(tmp_path / "checkpoints")
