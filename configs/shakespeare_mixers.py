"""Every mixer on tiny_shakespeare bytes at equal parameter count (~460K), sized for a CPU.

`configs/shakespeare_mixers.py:<mixer>` for each mixer in MLP_DIM below; pass the text with
--config.data.path=/path/to/tinyshakespeare.txt (or leave data.name = tiny_shakespeare for
tfds). `python -m experiments.run_mixer_experiments shakespeare` trains all of them and writes
the validation-loss table and curves.

Every model: byte vocabulary, d_model 128, 2 layers of (mixer + SwiGLU), 128-token rows, 400
steps of batch 16 (~0.8M bytes, about one pass over the training text). The
mixers use their papers' layouts at this width (attention/PaTH: 4 heads of 32; Mamba-2: expand
1, P 32, N 16; GDN: 2 heads, K 32, V 64); the SwiGLU width of each is set so that every model
has 459.5K +- 0.5K parameters (checked by tests/layers/test_architecture_configs.py).
"""

from configs.base import get_base_config, set_model_size

MLP_DIM = {"attention": 384, "path": 360, "path_fox": 359, "mamba2": 412,
           "loglinear_mamba2": 401, "gdn": 380, "loglinear_gdn": 374}
MIXER_OPTIONS = {"mamba2": {"expand": 1, "head_dim": 32, "d_state": 16},
                 "gdn": {"num_heads": 2, "head_dim": 32, "expand_v": 2}}


def get_config(arg: str | None = None):
  if arg not in MLP_DIM:
    raise ValueError(f"configs/shakespeare_mixers.py needs a mixer argument, one of "
                     f"{sorted(MLP_DIM)}; got {arg!r}")
  c = get_base_config()
  c.seq_len = 128
  c.batch_size = 16
  c.data.source = "text"
  c.data.name = "tiny_shakespeare"
  c.data.tokenizer = "byte"
  c.data.val_fraction = 0.1
  c.model.layer_pattern = arg
  set_model_size(c, d_model=128, num_layers=2, num_heads=4, head_dim=32, mlp_dim=MLP_DIM[arg])
  c.model.chunk_size = 128  # one chunk per row: exact, and the cheapest on a CPU at this length
  base = arg.removeprefix("loglinear_")
  if base in MIXER_OPTIONS:
    c.model.mixer_options[arg] = MIXER_OPTIONS[base]
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.num_steps = 400
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.eval_steps = 16
  c.train.checkpoint_every = 400
  c.train.keep_checkpoints = 1
  c.train.async_checkpointing = False
  c.train.progress_bar = False
  return c
