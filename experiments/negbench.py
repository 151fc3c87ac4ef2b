"""The NegBench experiment (docs/suites/negbench.md#the-toy-experiment): a tiny dual encoder
pretrained on the synthetic scenes' affirmative captions, fine-tuned on NegCap and on NegCap +
NegMCQ over alpha, each run evaluated by the negbench suite on the scenes' test split.

  python -m experiments.negbench [--workdir runs] [--out experiments/results/negbench]
                                 [--seeds 0,1] [--variants pretrain,negcap,negmcq_a0,...]

Each variant of configs/negbench.py trains as `python train.py --config
configs/negbench.py:<variant> --workdir <workdir>/negbench_s<seed>_<variant>
--config.seed=<seed>` would, the fine-tuning variants with `--config.init_from=` the same seed's
pretrain (or pretrain_gdn) export; a run with an export is reused as it is. alpha = 1 on NegFull
is the NegCap run (the MCQ term has weight 0 and the captions are NegCap's), so the alpha plot
reads it there. Writes <out>/report.json (every run's results, the means over seeds),
<out>/results.md (the table), alpha.png, mcq_types.png, and the PCA probe of the pretrained
and of the alpha = 0.9 model (pca_pretrain.png, pca_negmcq_a0.9.png).
"""

import argparse
import json
import os
import shutil

import numpy as np
from matplotlib.figure import Figure

from configs.negbench import VARIANTS, get_config
from lloglin.data.negbench import QUESTION_TYPES
from lloglin.evals import run_suite, save_figure

DEFAULT_VARIANTS = ("pretrain", "negcap", "negmcq_a0", "negmcq_a0.5", "negmcq_a0.9",
                    "negmcq_a0.99", "pretrain_gdn", "negmcq_a0.9_gdn")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "negbench")
COLUMNS = ("R@5", "R-Neg@5", "MCQ", "affirmation", "negation", "hybrid", "cos(aff, neg)")


def run_dir(workdir: str, seed: int, variant: str) -> str:
  return os.path.join(workdir, f"negbench_s{seed}_{variant}")


def train_and_evaluate(workdir: str, seed: int, variant: str) -> dict:
  """The suite's results of one run (trained first unless its export exists)."""
  run = run_dir(workdir, seed, variant)
  config = get_config(variant)
  config.seed = seed
  if not variant.startswith("pretrain"):
    config.init_from = os.path.join(
        run_dir(workdir, seed, "pretrain_gdn" if variant.endswith("_gdn") else "pretrain"),
        "export")
  if not os.path.isdir(os.path.join(run, "export")):
    from lloglin.training.trainer import train
    print(f"training {variant} (seed {seed}) into {run}", flush=True)
    train(config, run)
  out = os.path.join(run, "eval", "negbench")
  report = os.path.join(out, "report.json")
  if not os.path.isfile(report):
    run_suite("negbench", config, checkpoint=run, out_dir=out)
  with open(report) as f:
    return json.load(f)["results"]


def summary(results: dict) -> dict:
  m, r = results["mcq"], results["retrieval"]
  return {"R@5": r["original"]["R@5"], "R-Neg@5": r["negated"]["R@5"], "MCQ": m["accuracy"],
          **{t: m["per_type"][t] for t in QUESTION_TYPES},
          "cos(aff, neg)": results["probe"]["affirmation_negation_cosine"]}


def table(means: dict, stds: dict, seeds: list[int]) -> str:
  lines = [f"| variant | {' | '.join(COLUMNS)} |", "|---" * (len(COLUMNS) + 1) + "|"]
  for variant, row in means.items():
    cells = [f"{row[c]:.3f}" + (f" ± {stds[variant][c]:.3f}" if len(seeds) > 1 else "")
             for c in COLUMNS]
    lines.append(f"| {variant} | {' | '.join(cells)} |")
  return "\n".join(lines) + "\n"


def alpha_figure(means: dict, stds: dict, path: str):
  alphas = [(0.0, "negmcq_a0"), (0.5, "negmcq_a0.5"), (0.9, "negmcq_a0.9"),
            (0.99, "negmcq_a0.99"), (1.0, "negcap")]
  alphas = [(a, v) for a, v in alphas if v in means]
  fig = Figure(figsize=(10, 3.8))
  left, right = fig.subplots(1, 2)
  x = np.arange(len(alphas))
  for ax, columns in ((left, ("R@5", "R-Neg@5")), (right, ("MCQ",) + QUESTION_TYPES)):
    for column in columns:
      ax.errorbar(x, [means[v][column] for _, v in alphas],
                  yerr=[stds[v][column] for _, v in alphas], marker="o", capsize=3, label=column)
      if "pretrain" in means:
        ax.axhline(means["pretrain"][column], linestyle=":", linewidth=0.8,
                   color=ax.lines[-1].get_color())
    ax.set_xticks(x, [f"{a:g}" for a, _ in alphas])
    ax.set_xlabel("alpha (loss = alpha * CLIP + (1 - alpha) * MCQ; 1 = NegCap)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  left.set_title("retrieval (dotted: pretrained)")
  right.set_title("MCQ-Neg accuracy (dotted: pretrained)")
  fig.tight_layout()
  save_figure(fig, path)


def types_figure(means: dict, path: str):
  fig = Figure(figsize=(max(6, 1.1 * len(means)), 3.8))
  ax = fig.subplots()
  x = np.arange(len(means))
  for i, column in enumerate(("MCQ",) + QUESTION_TYPES):
    ax.bar(x + (i - 1.5) * 0.2, [row[column] for row in means.values()], width=0.2,
           label=column)
  ax.axhline(0.25, color="k", linestyle="--", linewidth=0.8, label="chance")
  ax.set_xticks(x, list(means), rotation=20, fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("accuracy")
  ax.set_title("MCQ-Neg accuracy per question type")
  ax.legend(fontsize=7, ncol=5)
  fig.tight_layout()
  save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs", help="where the runs negbench_s<seed>_* go")
  parser.add_argument("--out", default=RESULTS_DIR, help="report.json, results.md, the PNGs")
  parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
  parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                      help=f"comma-separated, from {VARIANTS} (fine-tuning needs its pretrain)")
  args = parser.parse_args(argv)
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  bad = [v for v in variants if v not in VARIANTS or v in ("default", "tiny")]
  if bad or not variants:
    parser.error(f"--variants={args.variants!r}: expected names from {VARIANTS[2:]}")
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  # pretraining first: the fine-tuning runs start from its export
  order = sorted(variants, key=lambda v: not v.startswith("pretrain"))
  runs = {v: {s: summary(train_and_evaluate(args.workdir, s, v)) for s in seeds} for v in order}
  runs = {v: runs[v] for v in variants}
  means = {v: {c: float(np.mean([r[c] for r in per.values()])) for c in COLUMNS}
           for v, per in runs.items()}
  stds = {v: {c: float(np.std([r[c] for r in per.values()])) for c in COLUMNS}
          for v, per in runs.items()}
  os.makedirs(args.out, exist_ok=True)
  alpha_figure(means, stds, os.path.join(args.out, "alpha.png"))
  types_figure(means, os.path.join(args.out, "mcq_types.png"))
  for variant in ("pretrain", "negmcq_a0.9"):
    if variant in runs:
      shutil.copyfile(os.path.join(run_dir(args.workdir, seeds[0], variant), "eval", "negbench",
                                   "pca.png"), os.path.join(args.out, f"pca_{variant}.png"))
  text = table(means, stds, seeds)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(f"NegBench toy (scenes' test split, 1000 images), seeds {seeds}: mean"
            f"{' ± std' if len(seeds) > 1 else ''} over seeds.\n\n{text}")
  with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump({"seeds": seeds, "variants": variants, "runs": runs, "means": means,
               "stds": stds}, f, indent=1)
  print(text)
  print(f"wrote {os.path.join(args.out, 'report.json')}")


if __name__ == "__main__":
  main()
