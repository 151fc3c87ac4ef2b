"""Character-level (byte) language modelling on tiny_shakespeare.

By default the text comes from tensorflow-datasets (`tiny_shakespeare`, downloaded once);
`--config.data.path=...` trains on a local file instead.
Variants: `:tiny` (seconds on CPU, for tests).
"""

from configs.base import get_base_config, set_model_size, smoke_run


def get_config(arg: str | None = None):
  c = get_base_config()
  c.seq_len = 256
  c.batch_size = 32
  c.data.source = "text"
  c.data.name = "tiny_shakespeare"
  c.data.tokenizer = "byte"
  set_model_size(c, d_model=256, num_layers=4, num_heads=4, head_dim=64, mlp_dim=768)
  c.optim.learning_rate = 1e-3
  c.train.num_steps = 2000
  c.train.eval_every = 250
  c.train.checkpoint_every = 500
  if arg == "tiny":
    c.seq_len = 64
    c.batch_size = 8
    set_model_size(c, d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
    smoke_run(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/shakespeare.py; valid: 'tiny'")
  return c
