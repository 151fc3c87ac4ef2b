"""The perception experiment (docs/suites/perception.md#the-toy-experiment), on the synthetic set:

1. a noisy oracle judge (flip probability p) compares every pair (or a budget of about 10
   opponents per image) on clutter and symmetry; Bradley-Terry scores (and win rates) are
   compared with the true levels by SROCC, over p in {0, 0.05, 0.1, 0.2, 0.3, 0.4} and seeds;
2. the computed-measure judges (edge density, mirror correlation, PNG size) on every pair: the
   SROCC of their Bradley-Terry scores with the true clutter and symmetry levels;
3. with --encoder (a dual encoder trained on lloglin's scenes, e.g. the negbench pretrain run's
   export), the encoder judge on clutter, its text in the encoder's small vocabulary (a caption
   naming six objects, ENCODER_TEXTS): the same SROCC.

  python -m experiments.perception [--out experiments/results/perception] [--num-images 60]
                                   [--seeds 0,1,2,3,4] [--encoder RUN/export]

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
ENCODER_TEXTS = {"clutter": "a photo of a circle , a ring , a square , a triangle , a diamond and "
                           "a cross"}
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


def judge_all_pairs(judge, items, principles, prior: float) -> dict:
  """{principle: {level: SROCC}} of a judge's Bradley-Terry scores on every pair."""
  pairs = judges.sample_pairs(len(items))
  out = {}
  for name in principles:
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
  parser.add_argument("--encoder", default="", help="a dual encoder's run or export")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",")]
  items = synthetic.make_images(args.num_images, seed=0)
  sweep = oracle_sweep(items, seeds, args.prior)
  results = {"flips": FLIPS, "seeds": seeds, "oracle": sweep,
             "oracle_mean": {b: {lv: {k: np.mean(v, axis=1) for k, v in per.items()}
                                 for lv, per in s.items()} for b, s in sweep.items()},
             "measure_judges": judge_all_pairs(judges.MeasureJudge(), items, judges.MEASURES,
                                               args.prior)}
  if args.encoder:
    from lloglin.evals.negbench.encoder import checkpoint_encoder
    judge = judges.EncoderJudge(checkpoint_encoder(args.encoder, batch_size=64), items,
                                texts=ENCODER_TEXTS)
    results["encoder_judge"] = {"checkpoint": args.encoder, "texts": ENCODER_TEXTS,
                                **judge_all_pairs(judge, items, ENCODER_TEXTS, args.prior)}
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
  for name in ENCODER_TEXTS if args.encoder else ():
    r = results["encoder_judge"][name]
    print(f"encoder judge {name}: " + "  ".join(f"{lv} {v:+.3f}" for lv, v in r.items()))


if __name__ == "__main__":
  main()
