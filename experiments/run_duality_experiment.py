"""Runs every variant of configs/duality.py and writes the numbers (JSON) and curves (PNG).

From the repository root:

  python -m experiments.run_duality_experiment --data_path /path/to/tinyshakespeare.txt \
      --workdir runs/duality --out experiments/results/duality
"""

import argparse
import json
import logging
import os

from configs import duality
from lloglin.training.metrics import read_metrics
from lloglin.training.trainer import train


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--data_path", required=True)
  p.add_argument("--workdir", default="runs/duality")
  p.add_argument("--out", default="experiments/results/duality")
  p.add_argument("--steps", type=int, default=0, help="override train.num_steps (0 = config)")
  a = p.parse_args()
  logging.basicConfig(level=logging.WARNING)
  rows, curves = [], {}
  for method in duality.METHODS:
    cfg = duality.get_config(method)
    cfg.data.path = a.data_path
    cfg.train.progress_bar = False
    if a.steps:
      cfg.train.num_steps = a.steps
    workdir = os.path.join(a.workdir, method)
    final = train(cfg, workdir)
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    memory = next(r for r in records if "optimizer_bytes/state_total" in r)
    curves[method] = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    rows.append({"method": method, "eval_loss": final["eval_loss"],
                 "optimizer_state_bytes": memory["optimizer_bytes/state_total"],
                 "low_rank_state_bytes": memory["optimizer_bytes/state_low_rank"],
                 "tokens_per_second": final["tokens_per_second"]})
    print(json.dumps(rows[-1]), flush=True)
  os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
  with open(a.out + ".json", "w") as f:
    json.dump({"rows": rows, "curves": curves}, f, indent=1)
  plot(curves, a.out + ".png")


def plot(curves, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  for method, points in curves.items():
    steps, losses = zip(*points)
    ax.plot(steps, losses, marker=".", label=method)
  ax.set_xlabel("step")
  ax.set_ylabel("validation loss (nats/byte)")
  ax.set_title("tiny_shakespeare: full AdamW vs one-sided low-rank methods (rank 32)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  main()
