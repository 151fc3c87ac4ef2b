"""experiments/mqar_gpu_sweep.py (parallel MQAR sweep with a deadline) and the records and report
of experiments/run_mixer_experiments.py that it relies on."""

import json
import os
import subprocess
import sys

import pytest

from experiments import mqar_gpu_sweep as sweep
from experiments import run_mixer_experiments as rme

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sweep(tmp_path, *flags, mixers="mamba2,loglinear_mamba2"):
  cmd = [sys.executable, "-m", "experiments.mqar_gpu_sweep", "--variant", "short", "--kv", "4",
         "--mixers", mixers, "--lrs", "1e-2,3e-3", "--workers", "2",
         "--workdir", str(tmp_path / "runs"), "--report_dir", str(tmp_path / "report"), *flags]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  root = tmp_path / "runs" / "mqar_lrsweep"
  return root, json.loads((root / "sweep_status.json").read_text())["jobs"]


@pytest.mark.slow
def test_sweep_trains_every_job_and_reports_best_over_learning_rates(tmp_path):
  # One mixer over two learning rates: the best-over-rates report is what is checked (each job
  # is a training subprocess; the two-mixer grid is the deadline test's).
  root, status = run_sweep(tmp_path, "--steps", "4", "--eval_every", "2", "--deadline", "200",
                           "--start_margin", "0", mixers="mamba2")
  names = [f"mamba2_kv4_lr{lr}_seed0" for lr in ("0.01", "0.003")]
  assert {n: s["status"] for n, s in status.items()} == {n: "done" for n in names}
  for n in names:
    record = json.loads((root / n / "result.json").read_text())
    assert record["config"]["train"]["num_steps"] == 4
    assert record["config"]["train"]["eval_every"] == 2
    assert 0.0 <= record["final"]["eval_accuracy"] <= 1.0
    assert record["command"].startswith("python -m experiments.mqar_gpu_sweep --variant short")
  table = (tmp_path / "report" / "mixer_experiments" / "mqar_lrsweep.md").read_text()
  assert "| mamba2 | 4 |" in table
  assert table.count(", 2 runs") == 1
  assert (tmp_path / "report" / "mqar_lrsweep.png").stat().st_size > 10_000
  # A second call finds every result and trains nothing.
  _, again = run_sweep(tmp_path, "--steps", "4", "--eval_every", "2", mixers="mamba2")
  assert {s["status"] for s in again.values()} == {"done before"}


def test_deadline_kills_the_running_job_and_skips_the_rest(tmp_path):
  root, status = run_sweep(tmp_path, "--steps", "100000", "--workers", "1", "--deadline", "3",
                           "--start_margin", "0")
  first, *rest = [f"{m}_kv4_lr{lr}_seed0" for lr in ("0.01", "0.003")
                  for m in ("mamba2", "loglinear_mamba2")]
  assert status[first]["status"] == "killed at the deadline"
  reason = json.loads((root / first / "stopped.json").read_text())["reason"]
  assert reason == status[first]["status"]
  assert not (root / first / "result.json").exists()
  assert {status[n]["status"] for n in rest} == {"skipped: not started before the deadline"}
  assert not (tmp_path / "report" / "mqar_lrsweep.png").exists()  # nothing evaluated


def record(mixer, kv, lr, seed, acc, steps=100):
  return {"name": f"{mixer}_kv{kv}_lr{lr:g}_seed{seed}", "params": 1000, "final": {
      "eval_accuracy": acc}, "config": {
          "seq_len": 64, "seed": seed, "model": {"layer_pattern": mixer},
          "train": {"num_steps": steps}, "data": {"mqar": {"num_kv_pairs": kv}},
          "optim": {"learning_rate": lr}}}


def test_a_stopped_run_counts_with_its_last_evaluation(tmp_path):
  exp = tmp_path / "mqar_lrsweep"
  done = exp / "gdn_kv8_lr0.01_seed0"
  done.mkdir(parents=True)
  (done / "result.json").write_text(json.dumps(record("gdn", 8, 1e-2, 0, 0.25)))
  stopped = exp / "gdn_kv8_lr0.003_seed0"
  stopped.mkdir()
  start = record("gdn", 8, 3e-3, 0, None)
  del start["final"]
  (stopped / "run.json").write_text(json.dumps(start))
  (stopped / "metrics.jsonl").write_text(
      '{"step": 0, "optimizer_bytes/adam": 8}\n{"step": 50, "loss": 2.0}\n'
      '{"step": 50, "eval_loss": 1.5, "eval_accuracy": 0.5}\n{"step": 100, "loss": 1.')
  (stopped / "stopped.json").write_text(json.dumps({"reason": "killed at the deadline"}))
  never = exp / "gdn_kv8_lr0.001_seed0"  # killed before its first evaluation: no record
  never.mkdir()
  (never / "run.json").write_text(json.dumps(start))
  (never / "metrics.jsonl").write_text('{"step": 0, "optimizer_bytes/adam": 8}\n')

  records = rme.saved("mqar_lrsweep", str(tmp_path))
  assert [r["name"] for r in records] == ["gdn_kv8_lr0.003_seed0", "gdn_kv8_lr0.01_seed0"]
  assert records[0]["final"] == {"eval_loss": 1.5, "eval_accuracy": 0.5}
  assert records[0]["stopped"] == {"step": 50, "reason": "killed at the deadline"}
  lines, _ = rme.mqar_report(records)
  assert "| gdn | 100 | 1,000 | 50.0 @0.003, 2 runs (stopped at step 50) |" in lines
  lines, _ = rme.mqar_report(records[:1])  # a stopped run alone is marked too
  assert lines[2] == "| gdn | 100 | 1,000 | 50.0 (stopped at step 50) |"


def test_report_cell_is_the_best_learning_rate_by_mean_over_seeds():
  records = [record("gdn", 16, 1e-2, 0, 0.8), record("gdn", 16, 1e-2, 1, 0.1),
             record("gdn", 16, 3e-3, 0, 0.6), record("gdn", 16, 3e-3, 1, 0.4),
             record("loglinear_gdn", 16, 1e-2, 0, 0.7), record("gdn", 32, 1e-2, 0, 0.2)]
  cell = rme.best_over_lr({1e-2: records[:2], 3e-3: records[2:4]})
  assert cell == {"acc": 50.0, "min": 40.0, "lr": 3e-3, "seeds": 2, "runs": 4, "stopped": None}
  lines, _ = rme.mqar_report(records)
  assert lines[:5] == [
      "| mixer | steps | params | 16 pairs | 32 pairs |", "|---|---|---|---|---|",
      "| gdn | 100 | 1,000 | 50.0 (min 40.0) @0.003, 4 runs | 20.0 @0.01, 1 run |",
      "| loglinear_gdn | 100 | 1,000 | 70.0 @0.01, 1 run | - |", ""]
  # One run per cell (the unswept experiments): plain accuracies, as before.
  assert rme.mqar_report(records[4:])[0][2:4] == ["| gdn | 100 | 1,000 | - | 20.0 |",
                                                "| loglinear_gdn | 100 | 1,000 | 70.0 | - |"]


def test_bad_arguments_name_the_problem():
  with pytest.raises(ValueError, match=r"--mixers has \['attention'\]"):
    sweep.parse_args(["--mixers", "gdn,attention"])
  with pytest.raises(ValueError, match="--workers=0"):
    sweep.parse_args(["--workers", "0"])


def test_jobs_start_learning_rate_first_and_spread_over_programs():
  args = sweep.parse_args(["--kv", "16,32", "--lrs", "3e-3,1e-2", "--mixers", "gdn,mamba2"])
  jobs = sweep.jobs(args)
  assert [j.name for j in jobs[:3]] == ["gdn_kv16_lr0.003_seed0", "mamba2_kv16_lr0.003_seed0",
                                        "gdn_kv32_lr0.003_seed0"]
  running = {None: (jobs[0], 0.0, None)}  # gdn at 3e-3 compiling: take another program
  assert sweep.next_job(jobs[1:], running).name == "mamba2_kv16_lr0.003_seed0"
  assert sweep.next_job([jobs[2]], running) == jobs[2]  # nothing else: the first pending
  assert args.compile_cache == os.path.join("runs/mixer_experiments", "jax_cache")
