"""The reWordBench experiment (docs/suites/rewordbench.md): reward models trained on the reward
world (configs/rewordbench.py), standard against augmented and paraphrase-regularised, evaluated
by the rewordbench suite on the world's held-out pairs under transforms never used in training.

  python -m experiments.rewordbench [--workdir runs/rewordbench] [--seeds 0,1] [--steps N]
                                    [--out experiments/results/rewordbench] [--tiny] [--jobs N]
  python -m experiments.rewordbench --merge A/report.json,B/report.json --out DIR

One `pretrain` run (the trunk as a byte-level LM on the world's texts, seed 0) is shared by every
reward run: the world's lexicon and rules do not depend on the seed, only which pairs are drawn.
Then for each seed and variant (standard, augment, reg1, reg10) a reward run initialised from its
export (`init_from`), as `python train.py --config configs/rewordbench.py:<variant>
--config.seed=<seed> --config.init_from=<workdir>/pretrain/export` would train it, and the suite
on it (as `eval.py --suite rewordbench` runs it) into <run>/eval/rewordbench. Finished steps are
skipped on a re-run (a run with an export is not trained again, an interrupted one resumes, a
suite run whose report.json exists is read back). `--jobs N` trains and evaluates N reward runs
at once, each in its own process (on one GPU: the runs are small, and each is mostly per-step
overhead; the processes then allocate device memory as they need it, not 75% each). Writes
<out>/report.json, <out>/drop.png and <out>/table.md, and prints the table. `--merge` writes the
same three files for the variants of several earlier reports (runs of one setup made by separate
commands), without training.

The world's training surface (what a model may have learnt to read, or to ignore): punctuation
spaced or quotes around a unit, a missing end mark (the artefacts), and from its paraphrases
item synonyms, openers ("Sure: "), joiners, end marks, the items' order, the first letter's case
and neutral sentences before and after the answer ("Good question.", "Hope this helps!").
`add_quotes` and `punct_spaces` make exactly the artefacts' surface: they are SEEN. Every other
transform below rewrites text in a way neither the training data nor the world's paraphraser
ever does (none of their text or marks is in the world): UNSEEN, the set the experiment's claim
is about. Of those, NOISE keeps rows about the training length (a letter or a word edited); the
others prepend or append text the world never holds (handles, links, tautologies, distractor
paragraphs, rows longer than the trained ones) or encode it (Rot-13/2, homoglyphs).
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os

import numpy as np

from configs.rewordbench import REWARD_VARIANTS, get_config, shrink, training_config
from lloglin.evals import run_suite, save_figure
from lloglin.evals.report import REPORT_FILE

VARIANTS = ("standard", "augment", "reg1", "reg10")
SEEN = ("add_quotes", "punct_spaces")
NOISE = ("char_swap", "char_substitution", "char_insertion", "char_deletion", "word_deletion")
UNSEEN = NOISE + ("homoglyph", "rot13", "rot2", "twitter_handle", "twitter_url", "stress_test",
                  "ignore_above", "ignore_below")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "rewordbench")


def _train(config, workdir: str):
  if not os.path.isdir(os.path.join(workdir, "export")):
    from lloglin.training.trainer import train
    print(f"training into {workdir}", flush=True)
    train(config, workdir)


def _set_steps(config, steps: int):
  """num_steps = steps, evaluation and checkpoints at its end (and halfway)."""
  config.train.num_steps = steps
  config.train.eval_every = config.train.checkpoint_every = max(1, steps // 2)
  config.train.log_every = max(1, min(config.train.log_every, steps // 4))


def _configure(config, *, steps: int | None, tiny: bool):
  if tiny:
    shrink(config)
  if steps:
    _set_steps(config, steps)
  config.train.progress_bar = False
  return config


def pretrain(workdir: str, *, steps: int | None = None, tiny: bool = False) -> str:
  """Trains (or reuses) the shared pretrain run <workdir>/pretrain; returns its export."""
  run = os.path.join(workdir, "pretrain")
  _train(_configure(training_config("pretrain"), steps=steps, tiny=tiny), run)
  return os.path.join(run, "export")


def run_variant(variant: str, seed: int, *, pretrain_export: str, workdir: str,
                steps: int | None = None, world_pairs: int | None = None, tiny: bool = False,
                transforms=SEEN + UNSEEN) -> dict:
  """Trains (or reuses) reward run <workdir>/<variant>-<seed> and returns the suite's results on
  it (`transforms`); tiny: every run at configs/rewordbench.py's smoke-test size (`shrink`) and
  200 held-out pairs unless world_pairs says otherwise."""
  config = _configure(get_config(variant), steps=steps, tiny=tiny)
  config.seed = seed
  config.init_from = pretrain_export
  run = os.path.join(workdir, f"{variant}-{seed}")
  _train(config, run)
  out_dir = os.path.join(run, "eval", "rewordbench")
  path = os.path.join(out_dir, REPORT_FILE)
  if not os.path.exists(path):
    config.rewordbench.transforms = tuple(transforms)
    config.rewordbench.batch_size = 500
    config.rewordbench.max_records = 0
    if world_pairs or tiny:
      config.rewordbench.world_pairs = world_pairs or 200
    run_suite("rewordbench", config, checkpoint=run, out_dir=out_dir)
  with open(path) as f:
    return json.load(f)["results"]


def summarize_run(results: dict) -> dict:
  """Clean accuracy, the overall drop per transform, mean drops over UNSEEN, NOISE and SEEN, and
  the mean accuracy after the UNSEEN transforms (where a model is at chance after a transform, its
  drop is its clean accuracy - 0.5: the accuracy after compares such models better)."""
  drops = {n: e["metrics"]["overall"]["drop"] for n, e in results["transforms"].items()
           if "metrics" in e}
  clean = results["original"]["overall"]["accuracy_before"]
  unseen = [drops[n] for n in UNSEEN if n in drops]
  return {"clean_accuracy": clean,
          "clean_chat_hard": results["original"]["Chat Hard"]["accuracy_before"],
          "drops": drops,
          "mean_drop_unseen": float(np.mean(unseen)),
          "mean_accuracy_unseen": float(clean - np.mean(unseen)),
          "mean_drop_noise": float(np.mean([drops[n] for n in NOISE if n in drops])),
          "mean_drop_seen": float(np.mean([drops[n] for n in SEEN if n in drops]))}


def aggregate(runs: dict[str, dict[int, dict]]) -> dict:
  """Per variant: mean and half-range (spread) over seeds of each summary number and drop."""
  out = {}
  for variant, by_seed in runs.items():
    rows = list(by_seed.values())
    keys = [k for k in rows[0] if k != "drops"]
    stat = lambda xs: {"mean": float(np.mean(xs)), "spread": float(np.ptp(xs) / 2)}
    out[variant] = {k: stat([r[k] for r in rows]) for k in keys}
    out[variant]["drops"] = {n: stat([r["drops"][n] for r in rows]) for n in rows[0]["drops"]}
  return out


def plot_drops(summary: dict, path: str) -> str:
  """Grouped horizontal bars: the accuracy drop (points) per transform and variant, mean over
  seeds, with the seeds' half-range as error bars; seen transforms first."""
  from matplotlib.figure import Figure
  variants = list(summary)
  names = [n for n in SEEN + UNSEEN if n in summary[variants[0]]["drops"]]
  fig = Figure(figsize=(7, 0.45 * len(names) + 1.5))
  ax = fig.subplots()
  height = 0.8 / len(variants)
  y = np.arange(len(names))[::-1]
  for i, v in enumerate(variants):
    d = summary[v]["drops"]
    ax.barh(y + 0.4 - (i + 0.5) * height, [100 * d[n]["mean"] for n in names], height,
            xerr=[100 * d[n]["spread"] for n in names], label=v, capsize=1.5)
  ax.set_yticks(y, [f"{n} (seen)" if n in SEEN else n for n in names])
  ax.axvline(0, color="black", linewidth=0.8)
  ax.set_xlabel("accuracy drop (points; clean - transformed), mean over seeds")
  ax.set_title("reWordBench on the reward world: drop per transform")
  ax.legend(loc="upper right", fontsize="small")
  ax.grid(axis="x", alpha=0.3)
  return save_figure(fig, path)


def table(runs: dict[str, dict[int, dict]], summary: dict) -> str:
  """Markdown: clean accuracy and mean drops (points) per variant, mean over seeds and each seed."""
  seeds = sorted(next(iter(runs.values())))
  cols = [("clean accuracy", "clean_accuracy"), ("mean drop, unseen", "mean_drop_unseen"),
          ("mean accuracy after, unseen", "mean_accuracy_unseen"),
          ("mean drop, noise", "mean_drop_noise"), ("mean drop, seen", "mean_drop_seen")]
  lines = ["| variant | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for v, by_seed in runs.items():
    cells = []
    for _, key in cols:
      each = " / ".join(f"{100 * by_seed[s][key]:.1f}" for s in seeds)
      cells.append(f"{100 * summary[v][key]['mean']:.1f} ({each})")
    lines.append(f"| {v} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"Points; mean over seeds {seeds} (each seed in parentheses). Unseen: "
               f"{', '.join(UNSEEN)}; noise: {', '.join(NOISE)}; seen: {', '.join(SEEN)}.")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="runs/rewordbench", help="where the runs go")
  parser.add_argument("--out", default=RESULTS_DIR, help="report.json, drop.png, table.md")
  parser.add_argument("--seeds", default="0,1", help="comma-separated reward-run seeds")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated, from {list(REWARD_VARIANTS)}")
  parser.add_argument("--steps", type=int, default=0,
                      help="training steps of every run (0 = the config's)")
  parser.add_argument("--world_pairs", type=int, default=0,
                      help="held-out pairs to evaluate (0 = the config's)")
  parser.add_argument("--tiny", action="store_true", help="smoke-test model sizes and steps")
  parser.add_argument("--jobs", type=int, default=1, help="reward runs trained at once")
  parser.add_argument("--merge", default="",
                      help="comma-separated report.json files of earlier runs: write one report "
                           "of all their variants to --out (no training)")
  args = parser.parse_args(argv)
  if args.merge:
    merge([p for p in args.merge.split(",") if p], args.out)
    return
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  if not variants or any(v not in REWARD_VARIANTS for v in variants):
    parser.error(f"--variants={args.variants!r}: expected names from {list(REWARD_VARIANTS)}")
  try:
    seeds = [int(s) for s in args.seeds.split(",")]
  except ValueError:
    parser.error(f"--seeds={args.seeds!r}: expected comma-separated integers")
  if args.steps < 0 or args.world_pairs < 0 or args.jobs < 1:
    parser.error(f"--steps={args.steps}, --world_pairs={args.world_pairs}, --jobs={args.jobs}: "
                 "expected steps and world_pairs >= 0, jobs >= 1")
  if args.jobs > 1:  # read when this process and its workers first use jax's backend
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  export = pretrain(args.workdir, steps=args.steps or None, tiny=args.tiny)
  options = dict(pretrain_export=export, workdir=args.workdir, steps=args.steps or None,
                 world_pairs=args.world_pairs or None, tiny=args.tiny)
  todo = [(v, seed) for seed in seeds for v in variants]
  if args.jobs > 1:
    with concurrent.futures.ProcessPoolExecutor(
        args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
      futures = [pool.submit(run_variant, v, seed, **options) for v, seed in todo]
      results = [f.result() for f in futures]
  else:
    results = [run_variant(v, seed, **options) for v, seed in todo]
  runs = {v: {} for v in variants}
  for (v, seed), r in zip(todo, results):
    runs[v][seed] = summarize_run(r)
  write_results(runs, args.out, args.steps or "config")


def write_results(runs: dict[str, dict[int, dict]], out: str, steps) -> None:
  """<out>/report.json, drop.png and table.md of the runs' summaries; prints the table."""
  summary = aggregate(runs)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, REPORT_FILE), "w") as f:
    json.dump({"seen": SEEN, "unseen": UNSEEN, "noise": NOISE, "steps": steps,
               "runs": {v: {str(s): r for s, r in by.items()} for v, by in runs.items()},
               "summary": summary}, f, indent=1)
  plot_drops(summary, os.path.join(out, "drop.png"))
  text = table(runs, summary)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"wrote {out}/report.json, drop.png, table.md")


def merge(paths: list[str], out: str) -> dict:
  """One report of the variants of several report.json files this script wrote (runs of the
  same setup made by separate commands; a variant named twice is an error). Returns the runs."""
  runs, steps = {}, set()
  for path in paths:
    with open(path) as f:
      report = json.load(f)
    steps.add(str(report["steps"]))
    for v, by_seed in report["runs"].items():
      if v in runs:
        raise ValueError(f"--merge: variant {v!r} is in more than one report ({path})")
      runs[v] = {int(s): r for s, r in by_seed.items()}
  if len(steps) > 1:
    raise ValueError(f"--merge: the reports trained for different steps {sorted(steps)}")
  write_results(runs, out, steps.pop())
  return runs


if __name__ == "__main__":
  main()
