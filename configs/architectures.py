"""One decoder per sequence mixer at about 125M parameters (GPT-3 Small / Mamba-2 130M sizes),
shared by configs/{transformer,mamba2,loglinear_mamba2,gdn,loglinear_gdn,path,path_fox}.py.

All use d_model 768, the GPT-2 vocabulary (tiktoken "gpt2", 50257 tokens padded to 50304; tied
embeddings, 38.6M of the parameters) and 2048-token sequences:
  transformer                12 x (attention: 12 heads of 64; SwiGLU 2048)        123.6M
  path, path_fox             the same with PaTH (+ w, beta [, forget] projections) 124.3M, 124.4M
  mamba2                     24 x Mamba-2 (expand 2, P 64, N 128), no MLP         129.0M
  loglinear_mamba2           + lambda projections for 12 levels                   134.3M
  gdn                        12 x (GDN: 6 heads, K 128, V 256; SwiGLU 1024)        123.9M
  loglinear_gdn              + lambda projections for 12 levels                   124.5M
(tests/layers/test_architecture_configs.py checks these counts.) The data default is tfds lm1b;
point --config.data.name / --config.data.path elsewhere as needed.

The `:tiny` variant of each is a seconds-long MQAR run with a 1-layer, 32-wide model (tests).
"""

from configs.base import get_base_config, set_model_size, smoke_run

ARCHITECTURES = ("transformer", "mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn", "path",
                 "path_fox")
_PATTERN = {"transformer": "attention"}
NO_DECAY_SSM = r"(^|/)(A_log|dt_bias|D|level_weight)$"


def architecture_config(arch: str, arg: str | None = None):
  if arch not in ARCHITECTURES:
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
  if arg not in (None, "", "tiny"):
    raise ValueError(f"unknown variant {arg!r} of configs/{arch}.py; valid: 'tiny'")
  mixer = _PATTERN.get(arch, arch)
  c = get_base_config()
  c.model.layer_pattern = mixer
  if arg == "tiny":
    _tiny(c, mixer)
  else:
    _125m(c, mixer)
  return c


def _125m(c, mixer):
  c.seq_len = 2048
  c.batch_size = 32
  c.data.source = "text"
  c.data.name = "lm1b"
  c.data.tokenizer = "tiktoken"
  c.data.tokenizer_path = "gpt2"
  c.model.vocab_size = 50304
  set_model_size(c, d_model=768, num_layers=12, num_heads=12, head_dim=64, mlp_dim=2048)
  c.model.dtype = "bfloat16"
  c.model.chunk_size = 64
  if mixer.endswith("mamba2"):
    c.model.num_layers = 24
    c.model.mlp_dim = 0
    c.model.mixer_options[mixer] = {"d_state": 128, "expand": 2, "head_dim": 64}
  elif mixer.endswith("gdn"):
    c.model.mlp_dim = 1024
    c.model.mixer_options[mixer] = {"num_heads": 6, "head_dim": 128, "expand_v": 2}
  c.optim.learning_rate = 6e-4
  c.optim.warmup_steps = 1000
  # As the Mamba-2 / GDN authors do: no decay on the SSM gates and the log-linear level gains.
  c.optim.no_decay_regex = NO_DECAY_SSM
  c.train.num_steps = 20_000
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000


def _tiny(c, mixer):
  c.seq_len = 32
  c.batch_size = 8
  c.data.source = "mqar"
  c.data.mqar.num_kv_pairs = 4
  c.data.mqar.vocab_size = 64
  c.data.mqar.num_val_examples = 64
  # One layer: each layer adds seconds of XLA compilation to the tests.
  set_model_size(c, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
  c.model.chunk_size = 16
  if mixer.endswith("mamba2"):
    c.model.mixer_options[mixer] = {"d_state": 16, "head_dim": 16}
  elif mixer.endswith("gdn"):
    c.model.mixer_options[mixer] = {"expand_v": 1}
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 5
  c.optim.weight_decay = 0.0
  smoke_run(c)
