"""GaLore / one-sided LoRA duality experiment: a character-level LM on tiny_shakespeare.

One method per variant, all at the same rank with new projections every 200 steps:
  :adamw  :galore (SVD)  :random_sketch (Gaussian)  :onesided_lora (SVD)  :onesided_lora_gaussian
`python -m experiments.run_duality_experiment` runs them all and writes the numbers and curves.
The text: tfds tiny_shakespeare by default, or --config.data.path=/path/to/tinyshakespeare.txt.
"""

from configs.base import set_model_size
from configs.shakespeare import get_config as shakespeare_config

METHODS = {
    "adamw": dict(name="adamw"),
    "galore": dict(name="galore", projection="svd"),
    "random_sketch": dict(name="random_sketch", projection="gaussian"),
    "onesided_lora": dict(name="onesided_lora", projection="svd"),
    "onesided_lora_gaussian": dict(name="onesided_lora", projection="gaussian"),
}


def get_config(arg: str | None = None):
  c = shakespeare_config()
  c.seq_len = 128
  c.batch_size = 16
  set_model_size(c, d_model=128, num_layers=4, num_heads=4, head_dim=32, mlp_dim=384)
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 50
  # Decoupled weight decay breaks the duality (docs/literature.md#optimizer-duality).
  c.optim.weight_decay = 0.0
  c.optim.rank = 32
  c.optim.refresh_every = 200
  c.train.num_steps = 800
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.eval_steps = 8
  c.train.checkpoint_every = 800
  method = arg or "adamw"
  if method not in METHODS:
    raise ValueError(f"unknown variant {method!r} of configs/duality.py; valid: {list(METHODS)}")
  for key, value in METHODS[method].items():
    setattr(c.optim, key, value)
  return c
