"""The perception experiment (docs/suites/perception.md#the-toy-experiment), on the synthetic set:

1. a noisy oracle judge (flip probability p) compares every pair (or a budget of about 10
   opponents per image) on clutter and symmetry; Bradley-Terry scores (and win rates) are
   compared with the true levels by SROCC, over p in {0, 0.05, 0.1, 0.2, 0.3, 0.4} and seeds;
2. the computed-measure judges (edge density, mirror correlation, PNG size) on every pair: the
   SROCC of their Bradley-Terry scores with the true clutter and symmetry levels.

  python -m experiments.perception [--out experiments/results/perception] [--num-images 60]
                                   [--seeds 0,1,2,3,4]

Writes <out>/report.json and <out>/oracle.png. Numpy only: seconds on a CPU.
"""

import argparse
import os

import numpy as np
import scipy.stats
from matplotlib.figure import Figure

from lloglin.evals.perception import aggregate, judges, synthetic
from lloglin.evals.report import save_figure, write_report

FLIPS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)
BUDGETS = {"all pairs": None, "10 per image": 10}
LEVELS = ("clutter", "symmetry")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "perception")


def srocc(scores, items, level: str) -> float:
  return float(scipy.stats.spearmanr(scores, [it.levels[level] for it in items]).statistic)


def oracle_sweep(items, seeds, prior: float) -> dict:
  """{budget: {level: {"bradley_terry"|"win_rate": [flip][seed] SROCC}}}."""
  out = {}
  for budget, per_image in BUDGETS.items():
    out[budget] = {level: {"bradley_terry": [], "win_rate": []} for level in LEVELS}
    for flip in FLIPS:
      for level in LEVELS:
        rows = {"bradley_terry": [], "win_rate": []}
        for seed in seeds:
          pairs = judges.sample_pairs(len(items), per_image=per_image, seed=seed)
          records, _ = judges.judge_pairs(judges.NoisyOracleJudge(flip, seed=seed), items,
                                          pairs, level, desc=f"{budget} p={flip} {level}")
          for key, scores in aggregate.scores_from_records(len(items), records,
                                                           prior=prior).items():
            rows[key].append(srocc(scores, items, level))
        for key in rows:
          out[budget][level][key].append(rows[key])
  return out


def measure_judges(items, prior: float) -> dict:
  """{principle: {level: SROCC}} of the measure judges' Bradley-Terry scores on every pair."""
  judge = judges.MeasureJudge()
  pairs = judges.sample_pairs(len(items))
  out = {}
  for name in judges.MEASURES:
    records, _ = judges.judge_pairs(judge, items, pairs, name)
    bt = aggregate.scores_from_records(len(items), records, prior=prior)["bradley_terry"]
    out[name] = {level: srocc(bt, items, level) for level in LEVELS}
  return out


def plot(sweep: dict, path: str):
  fig = Figure(figsize=(8, 3))
  for k, level in enumerate(LEVELS):
    ax = fig.add_subplot(1, 2, k + 1)
    for budget, style in zip(BUDGETS, ("-o", "--s")):
      for key, colour in (("bradley_terry", "C0"), ("win_rate", "C1")):
        r = np.array(sweep[budget][level][key])
        ax.errorbar(FLIPS, r.mean(1), yerr=r.std(1), fmt=style, color=colour, ms=3,
                    label=f"{key.replace('_', '-')}, {budget}")
    ax.axhline(0.9, color="k", lw=0.5, ls=":")
    ax.set(title=f"true {level} level", xlabel="flip probability p",
           ylabel="SROCC with the true level" if k == 0 else None, ylim=(0, 1.02))
  fig.axes[0].legend(fontsize=7)
  save_figure(fig, path)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=RESULTS_DIR)
  parser.add_argument("--num-images", type=int, default=60)
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--prior", type=float, default=0.1)
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  items = synthetic.make_images(args.num_images, seed=0)
  sweep = oracle_sweep(items, seeds, args.prior)
  results = {"flips": FLIPS, "seeds": seeds, "oracle": sweep,
             "oracle_mean": {b: {lv: {k: np.mean(v, axis=1) for k, v in per.items()}
                                 for lv, per in s.items()} for b, s in sweep.items()},
             "measure_judges": measure_judges(items, args.prior)}
  os.makedirs(args.out, exist_ok=True)
  plot(sweep, os.path.join(args.out, "oracle.png"))
  write_report(args.out, suite="perception", config=vars(args), results=results,
               figures=["oracle.png"])
  print("Bradley-Terry SROCC with the true level (mean over seeds), all pairs:")
  for level in LEVELS:
    row = results["oracle_mean"]["all pairs"][level]["bradley_terry"]
    print(f"  {level:9s} " + "  ".join(f"p={f:<4g} {v:.3f}" for f, v in zip(FLIPS, row)))
  print("measure judges (SROCC of BT scores with the true levels):")
  for name, r in results["measure_judges"].items():
    print(f"  {name:10s} " + "  ".join(f"{lv} {v:+.3f}" for lv, v in r.items()))


if __name__ == "__main__":
  main()
