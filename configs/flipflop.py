"""Flip-flop language modelling (the PaTH paper's toy): one layer, two heads, 64 wide.

The task and the settings taken from the paper: docs/literature.md#synthetic-tasks.

`configs/flipflop.py:<mixer>`, mixer in path | attention (RoPE) | path_fox. Trains on FFL(0.8)
(lloglin/data/flipflop.py) with the loss on the read answers only; the validation split is
FFL(data.flipflop.val_p_ignore). `python -m experiments.run_mixer_experiments flipflop`
trains each mixer and measures the read error on FFL(0.8), FFL(0.98) (sparse) and FFL(0.1)
(dense).

Reduced from the papers for a shared 2-core CPU: strings of 64 instruction-bit pairs (128
tokens) instead of 256 pairs, and 400 steps of batch 32. PaTH runs one 128-token block
(model.chunk_size = 128): the blockwise form is exact for any block size, and one block is the
cheapest on a CPU at this length.
"""

from configs.base import get_base_config, set_model_size

MIXERS = ("path", "attention", "path_fox")


def get_config(arg: str | None = None):
  if arg not in MIXERS:
    raise ValueError(f"configs/flipflop.py needs a mixer argument, one of {MIXERS}; got {arg!r}")
  c = get_base_config()
  c.seq_len = 128
  c.batch_size = 32
  c.data.source = "flipflop"
  c.data.flipflop.p_ignore = 0.8
  c.data.flipflop.val_p_ignore = 0.8
  c.data.flipflop.num_val_examples = 512
  c.model.layer_pattern = arg
  set_model_size(c, d_model=64, num_layers=1, num_heads=2, head_dim=32, mlp_dim=256)
  c.model.chunk_size = 128
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.1
  c.train.num_steps = 400
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.eval_steps = 4  # 128 validation strings during training; the final evals use all 512
  c.train.checkpoint_every = 400
  c.train.keep_checkpoints = 1
  c.train.async_checkpointing = False
  c.train.progress_bar = False
  return c
