"""Ladder Residual at toy scale: a 6-layer byte-level LM on tiny_shakespeare in each residual mode.

  python train.py --config configs/ladder.py:standard --workdir runs/ladder_standard \
      --config.data.path=/path/to/tinyshakespeare.txt
  (variants: standard | ladder | parallel | desync; desync only differs from standard under
   tensor parallelism, e.g. --config.mesh.tensor=2)

Hybrid adaptation of a trained standard model (layers >= residual_start_layer become ladder
layers, then a short fine-tune at a lower learning rate):

  python -m lloglin.training.hybrid --source runs/ladder_standard \
      --config configs/ladder.py:hybrid --workdir runs/ladder_hybrid \
      --config.data.path=/path/to/tinyshakespeare.txt

Without --config.data.path the text comes from tensorflow-datasets (tiny_shakespeare, one
download). Every variant has the same data, model size, optimizer and step count, so validation
losses compare at equal steps (benchmarks/RESULTS.md).
"""

from configs.base import get_base_config, set_model_size

VARIANTS = ("standard", "ladder", "parallel", "desync", "hybrid")


def get_config(arg: str | None = None):
  c = get_base_config()
  c.seq_len = 128
  c.batch_size = 16
  c.data.source = "text"
  c.data.name = "tiny_shakespeare"
  c.data.tokenizer = "byte"
  set_model_size(c, d_model=128, num_layers=6, num_heads=4, num_kv_heads=2, head_dim=32,
                 mlp_dim=384)
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.1
  c.train.num_steps = 400
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.eval_steps = 20
  c.train.checkpoint_every = 400
  c.train.progress_bar = False
  mode = arg or "ladder"
  if mode not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/ladder.py; valid: {list(VARIANTS)}")
  if mode == "hybrid":
    # Fine-tune of a converted standard model: the upper half becomes ladder layers.
    c.model.residual_mode = "ladder"
    c.model.residual_start_layer = c.model.num_layers // 2
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 10
    c.train.num_steps = 100
    c.train.eval_every = 50
    c.train.checkpoint_every = 100
  else:
    c.model.residual_mode = mode
  return c
