"""The embedded default: a small Transformer learns multi-query associative recall on CPU.

`make train` runs it. Variants: `configs/mqar.py:tiny` (a few-second smoke run for tests).
On MQAR a 2-layer Transformer sits at ~1/num_kv_pairs accuracy (it recalls *a* value of the
context) until induction heads form. Width 128 and 128 sequences a batch make that happen early
in a short run; the sweep that chose them (experiments/mqar_phase_sweep.py) and its table are in
benchmarks/RESULTS.md.
"""

from configs.base import get_base_config, set_model_size, smoke_run


def get_config(arg: str | None = None):
  c = get_base_config()
  c.seq_len = 32
  c.batch_size = 128
  c.data.source = "mqar"
  c.data.mqar.vocab_size = 128
  c.data.mqar.num_kv_pairs = 4
  set_model_size(c, d_model=128, num_layers=2, num_heads=2, head_dim=64, mlp_dim=256)
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.0
  c.train.num_steps = 1200
  c.train.log_every = 50
  c.train.eval_every = 300
  c.train.checkpoint_every = 600
  if arg == "tiny":
    c.batch_size = 8
    c.seq_len = 32
    c.data.mqar.num_kv_pairs = 4
    c.data.mqar.vocab_size = 64
    c.data.mqar.num_val_examples = 64
    set_model_size(c, d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                   mlp_dim=64)
    smoke_run(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/mqar.py; valid: 'tiny'")
  return c
