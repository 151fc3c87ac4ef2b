"""The sequence-mixer experiments at toy scale: runs, tables and plots. From the repository root:

  python -m experiments.run_mixer_experiments mqar [--kv 4,8,12,16] [--mixers ...] [--steps N]
  python -m experiments.run_mixer_experiments mqar_long --kv 16,32,64   # 256-token rows
  python -m experiments.run_mixer_experiments flipflop [--steps N]
  python -m experiments.run_mixer_experiments shakespeare --data_path /path/to/tinyshakespeare.txt
  python -m experiments.run_mixer_experiments report    # tables and PNGs from saved runs
  python -m experiments.mqar_gpu_sweep ...  # MQAR x learning rates, in parallel (mqar_lrsweep*)

Each run trains through lloglin.training.trainer.train with a config from configs/
(mqar_sweep.py, flipflop.py, shakespeare_mixers.py) and saves <workdir>/<experiment>/<run>/
result.json; a run whose result exists is skipped, so an interrupted sweep resumes. `report`
(also run at the end of every experiment) writes <report_dir>/mixer_experiments/<experiment>.md
and .json (the tables, with the machine, versions and commands) and <report_dir>/<experiment>.png
(report_dir defaults to experiments/results/). Measured tables: benchmarks/RESULTS.md. The report
figures are pyplot-free `Figure`s, so that the notebooks can show them.
"""

import argparse
import ast
import datetime
import importlib
import json
import os
import platform
import sys
import time

import jax
import numpy as np
from matplotlib.figure import Figure

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MQAR_MIXERS = ("mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn")
FLIPFLOP_MIXERS = ("path", "attention", "path_fox")
# (name, p_ignore of FFL(p)) of the three test distributions of Liu et al. 2023.
FLIPFLOP_SPLITS = (("in-distribution FFL(0.8)", 0.8), ("sparse OOD FFL(0.98)", 0.98),
                   ("dense OOD FFL(0.1)", 0.1))
LABELS = {"attention": "RoPE attention", "path": "PaTH", "path_fox": "PaTH-FoX"}
SHAKESPEARE_MIXERS = ("attention", "path", "path_fox", "mamba2", "loglinear_mamba2", "gdn",
                      "loglinear_gdn")


def load_config(module: str, arg: str, overrides: list[str]):
  cfg = importlib.import_module(f"configs.{module}").get_config(arg)
  for item in overrides:
    key, value = item.split("=", 1)
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
      node = node[p]
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    node[leaf] = value
  return cfg


COMMAND = ""  # this invocation, saved with every run it trains


def param_count(cfg) -> int:
  """Parameters of the model a config trains (vocabulary from its data, as the trainer does)."""
  from flax import nnx

  from lloglin.models import build_model, count_params
  from lloglin.training import trainer

  vocab = trainer.make_datasets(cfg)[0].vocab_size
  return count_params(nnx.eval_shape(lambda: build_model(trainer.model_config(cfg, vocab))))


def run(experiment: str, name: str, cfg, workdir: str, evaluate_after=None) -> dict:
  """Trains one config (or loads its saved result) and returns the result record.

  The record without its results goes to run.json before training, so that a run stopped early
  (killed at a deadline, crashed) still reports its last evaluation (`saved`).
  """
  from lloglin.training import trainer

  run_dir = os.path.join(workdir, experiment, name)
  path = os.path.join(run_dir, "result.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  print(f"--- {experiment}/{name}", flush=True)
  record = {"name": name, "command": COMMAND, "device": jax.devices()[0].device_kind,
            "params": param_count(cfg), "config": cfg.to_dict()}
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "run.json"), "w") as f:
    json.dump(record, f, indent=1)
  start = time.time()
  final = trainer.train(cfg, run_dir)
  seconds = time.time() - start
  record["train_seconds"] = round(seconds, 1)
  record["final"] = {k: v for k, v in final.items() if k != "eval_loss_per_position"}
  if evaluate_after is not None:
    record["evals"] = evaluate_after(cfg, run_dir)
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  print(f"    {name}: {json.dumps(record['final'])} ({seconds:.0f} s)", flush=True)
  return record


# ------------------------------------------------------------------------------------------------
# MQAR


def mqar(args, variant=""):
  """The pairs sweep of configs/mqar_sweep.py:<mixer><variant> ('' or ',long')."""
  experiment = "mqar" + variant.replace(",", "_")
  results = []
  for mixer in args.mixers or MQAR_MIXERS:
    for kv in args.kv:
      cfg = load_config("mqar_sweep", mixer + variant, args.set)
      cfg.data.mqar.num_kv_pairs = kv
      if args.steps:
        cfg.train.num_steps = cfg.train.eval_every = cfg.train.checkpoint_every = args.steps
      results.append(run(experiment, f"{mixer}_kv{kv}{args.tag}", cfg, args.workdir))
  return results


def best_over_lr(by_lr: dict) -> dict:
  """The cell of a sweep: the learning rate whose mean accuracy over seeds is highest, that mean
  (%), its minimum over seeds, how many runs (rates x seeds) stand behind the cell, and the
  earliest step at which a run at that rate stopped before its end (None if none did)."""
  accs = {lr: [100 * r["final"]["eval_accuracy"] for r in rs] for lr, rs in by_lr.items()}
  lr = max(accs, key=lambda lr: np.mean(accs[lr]))
  return {"acc": float(np.mean(accs[lr])), "min": min(accs[lr]), "lr": lr,
          "seeds": len(accs[lr]), "runs": sum(map(len, accs.values())),
          "stopped": min((r["stopped"]["step"] for r in by_lr[lr] if "stopped" in r),
                         default=None)}


def mqar_report(records):
  groups = {}  # (mixer, steps) -> {kv: {learning rate: [records, one per seed]}}
  for r in records:
    c = r["config"]
    key = (c["model"]["layer_pattern"], c["train"]["num_steps"])
    (groups.setdefault(key, {}).setdefault(c["data"]["mqar"]["num_kv_pairs"], {})
     .setdefault(c["optim"]["learning_rate"], []).append(r))
  cells = {key: {kv: best_over_lr(by_lr) for kv, by_lr in d.items()} for key, d in groups.items()}
  swept = any(cell["runs"] > 1 for d in cells.values() for cell in d.values())
  order = sorted(groups, key=lambda k: (k[1], MQAR_MIXERS.index(k[0])))
  kvs = sorted({kv for d in groups.values() for kv in d})

  def text(cell):
    stopped = "" if cell["stopped"] is None else f" (stopped at step {cell['stopped']})"
    if not swept:
      return f"{cell['acc']:.1f}{stopped}"
    spread = f" (min {cell['min']:.1f})" if cell["seeds"] > 1 else ""
    runs = f"{cell['runs']} run" + ("s" if cell["runs"] > 1 else "")
    return f"{cell['acc']:.1f}{spread} @{cell['lr']:g}, {runs}{stopped}"

  lines = ["| mixer | steps | params | " + " | ".join(f"{kv} pairs" for kv in kvs) + " |",
           "|---|---|---|" + "---|" * len(kvs)]
  for key in order:
    d = cells[key]
    params = next(r["params"] for by_lr in groups[key].values() for rs in by_lr.values()
                  for r in rs)
    lines.append(f"| {key[0]} | {key[1]} | {params:,} | "
                 + " | ".join(text(d[kv]) if kv in d else "-" for kv in kvs) + " |")
  if swept:
    lines += ["", "A cell: validation accuracy (%) at the learning rate (after @) whose mean over "
              "seeds is best, that mean (its minimum over seeds in brackets when there are "
              "several), and the number of runs (rates x seeds) behind it."]
  if any(cell["stopped"] is not None for d in cells.values() for cell in d.values()):
    lines += ["", "Stopped at step s: a run stopped before its last step (killed at a deadline, "
              "or failed) and counts with its last evaluation, at step s."]

  fig = Figure(figsize=(6.5, 4))
  ax = fig.subplots()
  colors = {"mamba2": "C0", "loglinear_mamba2": "C0", "gdn": "C1", "loglinear_gdn": "C1"}
  default_steps = min(k[1] for k in groups)
  for (mixer, steps) in order:
    d = cells[(mixer, steps)]
    ks = sorted(d)
    ax.plot(ks, [d[k]["acc"] for k in ks],
            marker="o" if steps == default_steps else "*", markersize=5 if steps ==
            default_steps else 11, color=colors[mixer],
            linestyle="-" if mixer.startswith("loglinear") else "--",
            label=mixer if steps == default_steps else f"{mixer}, {steps} steps")
  ax.set_xticks(kvs, [str(k) for k in kvs])
  ax.set_xlabel("key-value pairs")
  ax.set_ylabel("MQAR accuracy (%)" + (", best learning rate" if swept else ""))
  ax.set_ylim(-2, 102)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  seq_len = records[0]["config"]["seq_len"]
  ax.set_title(f"MQAR, {seq_len}-token rows, equal width, {default_steps} steps: log-linear "
               "(solid) vs linear (dashed)",
               fontsize=9)
  fig.tight_layout()
  return lines, fig


# ------------------------------------------------------------------------------------------------
# Flip-flop


def flipflop_evals(cfg, run_dir):
  """Read error on each test distribution, from the exported weights."""
  from flax import nnx

  from lloglin.data import make_dataset
  from lloglin.training.tasks.lm import evaluate
  from lloglin.parallel import distributed
  from lloglin.training.loading import load_model
  from lloglin.training.step import make_eval_step

  model, _ = load_model(os.path.join(run_dir, "export"))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  eval_step = make_eval_step(graphdef)
  out = {}
  for name, p in FLIPFLOP_SPLITS:
    data = cfg.data.copy_and_resolve_references()
    data.flipflop.val_p_ignore = p
    ds = make_dataset(data, split="validation", seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                      seed=cfg.seed)
    batches = data.flipflop.num_val_examples // cfg.batch_size
    m = evaluate(eval_step, params, rest, ds, batches, distributed.data_mesh())
    out[name] = {"read_error": 1.0 - m["eval_accuracy"], "reads": m["eval_tokens"],
                 "strings": batches * cfg.batch_size}
  return out


def flipflop(args):
  results = []
  for mixer in args.mixers or FLIPFLOP_MIXERS:
    for seed in args.seeds:
      cfg = load_config("flipflop", mixer, args.set)
      cfg.seed = seed
      if args.steps:
        cfg.train.num_steps = cfg.train.eval_every = cfg.train.checkpoint_every = args.steps
      results.append(run("flipflop", f"{mixer}_seed{seed}{args.tag}", cfg, args.workdir,
                         flipflop_evals))
  return results


def flipflop_report(records):
  def key(r):
    return (r["config"]["model"]["layer_pattern"], r["config"]["train"]["num_steps"])

  lines = ["| mixer | steps | seed | params | " + " | ".join(n for n, _ in FLIPFLOP_SPLITS) + " |",
           "|---|---|---|---|" + "---|" * len(FLIPFLOP_SPLITS)]
  records = sorted(records, key=lambda r: (FLIPFLOP_MIXERS.index(key(r)[0]), key(r)[1],
                                           r["config"]["seed"]))
  for r in records:
    cells = [f"{100 * r['evals'][n]['read_error']:.2f} % ({r['evals'][n]['reads']} reads)"
             for n, _ in FLIPFLOP_SPLITS]
    mixer, steps = key(r)
    lines.append(f"| {mixer} | {steps} | {r['config']['seed']} | {r['params']:,} | "
                 + " | ".join(cells) + " |")

  groups = list(dict.fromkeys(key(r) for r in records))
  fig = Figure(figsize=(7, 4))
  ax = fig.subplots()
  width = 0.8 / len(groups)
  for i, group in enumerate(groups):
    rs = [r for r in records if key(r) == group]
    errs = np.array([[100 * r["evals"][n]["read_error"] for n, _ in FLIPFLOP_SPLITS] for r in rs])
    x = np.arange(len(FLIPFLOP_SPLITS)) + i * width
    bars = ax.bar(x, errs.mean(0), width, label=f"{LABELS[group[0]]}, {group[1]} steps",
                  yerr=None if len(rs) == 1 else errs.std(0))
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
  ax.set_xticks(np.arange(len(FLIPFLOP_SPLITS)) + width * (len(groups) - 1) / 2,
                [n for n, _ in FLIPFLOP_SPLITS])
  ax.set_ylabel("read error (%)")
  ax.set_title("Flip-flop language modelling, 1 layer, 2 heads")
  ax.legend()
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  return lines, fig


# ------------------------------------------------------------------------------------------------
# tiny_shakespeare


def shakespeare(args):
  if not args.data_path:
    raise SystemExit("shakespeare needs --data_path (e.g. /path/to/tinyshakespeare.txt)")
  results = []
  for mixer in args.mixers or SHAKESPEARE_MIXERS:
    cfg = load_config("shakespeare_mixers", mixer, args.set + [f"data.path={args.data_path!r}"])
    if args.steps:
      cfg.train.num_steps = cfg.train.checkpoint_every = args.steps
    results.append(run("shakespeare", f"{mixer}{args.tag}", cfg, args.workdir))
  return results


def shakespeare_report(records, workdir):
  from lloglin.training.metrics import read_metrics

  lines = ["| mixer | params | val loss (nats/byte) | val bpb | train s |", "|---|---|---|---|---|"]
  fig = Figure(figsize=(6.5, 4))
  ax = fig.subplots()
  order = {m: i for i, m in enumerate(SHAKESPEARE_MIXERS)}
  for r in sorted(records, key=lambda r: r["final"]["eval_loss"]):
    loss = r["final"]["eval_loss"]
    lines.append(f"| {r['name']} | {r['params']:,} | {loss:.4f} | {loss / np.log(2):.3f} | "
                 f"{r['train_seconds']:.0f} |")
  for r in sorted(records, key=lambda r: order.get(r["name"], 99)):
    rows = [m for m in read_metrics(os.path.join(workdir, "shakespeare", r["name"],
                                                 "metrics.jsonl")) if "eval_loss" in m]
    ax.plot([m["step"] for m in rows], [m["eval_loss"] for m in rows], marker=".",
            label=r["name"])
  ax.set_xlabel("step")
  ax.set_ylabel("validation loss (nats / byte)")
  ax.set_title("tiny_shakespeare, bytes, equal parameter count")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return lines, fig


# ------------------------------------------------------------------------------------------------


def saved(experiment, workdir):
  """The records of an experiment's runs: finished ones, and stopped ones that evaluated once."""
  root = os.path.join(workdir, experiment)
  if not os.path.isdir(root):
    return []
  out = []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "result.json")
    if os.path.exists(path):
      with open(path) as f:
        out.append(json.load(f))
    elif (record := stopped_record(os.path.join(root, name))) is not None:
      out.append(record)
  return out


def stopped_record(run_dir) -> dict | None:
  """The record of a run stopped before its end (no result.json), or None if it never evaluated:
  its run.json with the last evaluation in metrics.jsonl as `final`, and `stopped` = that step and
  the reason from stopped.json (written by whatever stopped it, e.g. experiments/mqar_gpu_sweep.py).
  """
  paths = {n: os.path.join(run_dir, n) for n in ("run.json", "metrics.jsonl", "stopped.json")}
  if not (os.path.exists(paths["run.json"]) and os.path.exists(paths["metrics.jsonl"])):
    return None
  last = None
  with open(paths["metrics.jsonl"]) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # the line the process was writing when it was killed
        continue
      if "eval_accuracy" in row:
        last = row
  if last is None:
    return None
  with open(paths["run.json"]) as f:
    record = json.load(f)
  reason = {"reason": "unknown (no result.json, no stopped.json)"}
  if os.path.exists(paths["stopped.json"]):
    with open(paths["stopped.json"]) as f:
      reason = json.load(f)
  record["final"] = {k: v for k, v in last.items() if k != "step"}
  record["stopped"] = {"step": last["step"], **reason}
  return record


def report(experiment, workdir, out_dir):
  records = saved(experiment, workdir)
  if not records:
    return
  if experiment.startswith("mqar"):
    lines, fig = mqar_report(records)
  elif experiment == "flipflop":
    lines, fig = flipflop_report(records)
  else:
    lines, fig = shakespeare_report(records, workdir)
  tables = os.path.join(out_dir, "mixer_experiments")
  os.makedirs(tables, exist_ok=True)
  png = os.path.join(out_dir, f"{experiment}.png")
  fig.savefig(png, dpi=120)
  commands = sorted({r.get("command", "") for r in records})
  devices = sorted({r["device"] for r in records if "device" in r})
  header = (f"report written {datetime.date.today()} on {platform.node()} ({platform.machine()}, "
            f"{os.cpu_count()} CPUs, jax {jax.__version__} on {jax.default_backend()}); runs made "
            f"by: " + "; ".join(f"`{c}`" for c in commands)
            + (f"; runs on: {', '.join(devices)}" if devices else ""))
  with open(os.path.join(tables, f"{experiment}.md"), "w") as f:
    f.write(header + "\n\n" + "\n".join(lines) + "\n")
  summary = [{k: r[k] for k in ("name", "params", "train_seconds", "final", "evals", "stopped")
              if k in r}
             for r in records]
  with open(os.path.join(tables, f"{experiment}.json"), "w") as f:
    json.dump({"header": header, "runs": summary}, f, indent=1)
  print(header)
  print("\n".join(lines))
  print(f"wrote {png}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("experiment",
                      choices=("mqar", "mqar_long", "flipflop", "shakespeare", "report"))
  parser.add_argument("--workdir", default="runs/mixer_experiments")
  parser.add_argument("--mixers", type=lambda s: s.split(","), default=None)
  parser.add_argument("--kv", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 12, 16])
  parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
  parser.add_argument("--steps", type=int, default=0, help="override train.num_steps")
  parser.add_argument("--tag", default="", help="suffix of the run names (e.g. _long)")
  parser.add_argument("--data_path", default="")
  parser.add_argument("--report_dir", default=RESULTS_DIR,
                      help="where the PNGs and mixer_experiments/ tables go "
                           "(default experiments/results/)")
  parser.add_argument("--set", action="append", default=[],
                      help="config override key=value (repeatable), e.g. model.d_model=64")
  args = parser.parse_args()
  global COMMAND
  COMMAND = "python -m experiments.run_mixer_experiments " + " ".join(sys.argv[1:])
  # mqar_lrsweep*: the learning-rate sweeps of experiments/mqar_gpu_sweep.py.
  experiments = (("mqar", "mqar_long", "mqar_lrsweep", "mqar_lrsweep_long", "flipflop",
                  "shakespeare") if args.experiment == "report" else (args.experiment,))
  if args.experiment != "report":
    {"mqar": mqar, "mqar_long": lambda a: mqar(a, ",long"), "flipflop": flipflop,
     "shakespeare": shakespeare}[args.experiment](args)
  for experiment in experiments:
    report(experiment, args.workdir, args.report_dir)


if __name__ == "__main__":
  main()
