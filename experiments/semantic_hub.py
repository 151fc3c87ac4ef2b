"""The semantic-hub experiment (docs/suites/semantic_hub.md): the models of configs/semantic_hub.py
trained on the synthetic multilingual world, then analysed together by the semantic_hub suite.

  python -m experiments.semantic_hub [--workdir runs] [--out experiments/results/semantic_hub]
                                     [--variants shallow,transformer,gdn,loglinear_gdn]

Each variant trains as `python train.py --config configs/semantic_hub.py:<variant> --workdir
<workdir>/hub_<variant>` would (a run with an export is reused as it is; an interrupted one
resumes). The suite then runs with the first variant's settings, the other runs as
`semantic_hub.compare`, one curve per model in <out>/similarity.png, logit_lens.png and
steering.png, the figures in <out>/report.json.
"""

import argparse
import os

from configs.semantic_hub import VARIANTS, get_config
from lloglin.evals import run_suite

DEFAULT_VARIANTS = ("transformer", "gdn", "loglinear_gdn", "shallow")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "semantic_hub")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs", help="where the runs hub_<variant> go")
  parser.add_argument("--out", default=RESULTS_DIR, help="report.json and the PNGs")
  parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                      help=f"comma-separated, from {VARIANTS}")
  args = parser.parse_args(argv)
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  bad = [v for v in variants if v not in VARIANTS]
  if bad or not variants:
    parser.error(f"--variants={args.variants!r}: expected names from {VARIANTS}")
  runs = [os.path.join(args.workdir, f"hub_{v}") for v in variants]
  for variant, run in zip(variants, runs):
    if not os.path.isdir(os.path.join(run, "export")):
      from lloglin.training.trainer import train
      print(f"training {variant} into {run}")
      train(get_config(variant), run)
  config = get_config(variants[0])
  config.semantic_hub.compare = ",".join(runs[1:])
  config.semantic_hub.labels = ",".join(variants)
  run_suite("semantic_hub", config, checkpoint=runs[0], out_dir=args.out)
  print(f"wrote {os.path.join(args.out, 'report.json')}")


if __name__ == "__main__":
  main()
