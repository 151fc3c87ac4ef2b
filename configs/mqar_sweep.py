"""MQAR at equal model width for the recurrent mixers and their log-linear versions (the
log-linear attention paper's synthetic test, docs/literature.md#reference-results), sized for a CPU.

`configs/mqar_sweep.py:<mixer>` with mixer in mamba2 | loglinear_mamba2 | gdn | loglinear_gdn;
sweep the pairs with `--config.data.mqar.num_kv_pairs=N` (N <= 16). `:<mixer>,long` has rows of
256 tokens (9 levels) and vocabulary 256, for up to 64 pairs.
`python -m experiments.run_mixer_experiments mqar` runs the whole sweep and plots it.

Every model: d_model 64, ONE layer (mixer + SwiGLU 128), sequences of 64 tokens (7 log-linear
levels), vocabulary 64 (keys from [1, 32), values from [32, 64)). The recurrent state is the
same size, 1024 numbers per level: Mamba-2 with 8 heads of P = 16 and d_state 8; Gated DeltaNet
with 2 heads of K = 16, V = 32. The log-linear versions keep up to 7 such states (one per level),
which is the point of the comparison.

Reduced from the papers (Zoology / log-linear: 2+ layers, longer sequences, many epochs) to fit
a shared 2-core CPU: one layer is enough for these mixers, whose short convolutions move each key
into its value's position, and with learning rate 1e-2 it learns MQAR in a few hundred steps
where two layers at 3e-3 took far longer (benchmarks/RESULTS.md, MQAR and mixer experiments).
"""

from configs.base import get_base_config, set_model_size

MIXERS = ("mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn")


def get_config(arg: str | None = None):
  mixer, _, variant = (arg or "").partition(",")
  if mixer not in MIXERS or variant not in ("", "long"):
    raise ValueError(f"configs/mqar_sweep.py needs a mixer argument, one of {MIXERS}, optionally "
                     f"followed by ',long'; got {arg!r}")
  c = get_base_config()
  c.seq_len = 64
  c.batch_size = 64
  c.data.source = "mqar"
  c.data.mqar.vocab_size = 64
  c.data.mqar.num_kv_pairs = 8
  c.data.mqar.num_val_examples = 512
  c.model.layer_pattern = mixer
  set_model_size(c, d_model=64, num_layers=1, num_heads=2, head_dim=32, mlp_dim=128)
  c.model.chunk_size = 16
  c.model.mixer_options[mixer] = ({"d_state": 8, "head_dim": 16, "expand": 2}
                                  if mixer.endswith("mamba2") else
                                  {"num_heads": 2, "head_dim": 16, "expand_v": 2})
  c.optim.learning_rate = 1e-2
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.0
  c.train.num_steps = 500
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_steps = 8  # the 512 validation examples
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 1
  c.train.async_checkpointing = False
  c.train.progress_bar = False
  if variant == "long":
    # Rows 4x longer (9 levels) and up to 64 pairs (Zoology's and the log-linear paper's count),
    # the same states: the pairs outnumber what one 1024-number state holds.
    c.seq_len = c.model.max_seq_len = 256
    c.data.mqar.vocab_size = 256
    c.data.mqar.num_kv_pairs = 32
    c.model.chunk_size = 32
  return c
