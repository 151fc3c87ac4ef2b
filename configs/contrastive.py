"""A CLIP-style dual encoder (task "contrastive") learns the toy colour pairs on CPU.

Each image holds one coloured square and its caption names the colour (lloglin/data/
contrastive.py's `toy_pairs`); the in-batch retrieval accuracy's chance is 1 / batch_size, and
its ceiling is below 1: rows of the same colour have the same caption, so their scores tie.
The `model` section is the text tower (any mixer: `--config.model.layer_pattern=gdn`), the
`contrastive.encoder` section the ViT image tower and the shared embedding width, and
`contrastive.alpha` mixes InfoNCE with NegBench's multiple-choice loss (lloglin/training/tasks/
contrastive.py): `--config.contrastive.alpha=0.5` trains on toy_pairs' colour options too.
Variants:
- `:tiny`: a seconds-long smoke run for the tests.
"""

import ml_collections

from configs.base import get_base_config, set_model_size, smoke_run


def get_config(arg: str | None = None):
  c = get_base_config()
  c.task = "contrastive"
  c.contrastive = ml_collections.ConfigDict()
  c.contrastive.alpha = 1.0  # alpha * InfoNCE + (1 - alpha) * MCQ cross-entropy
  c.contrastive.encoder = ml_collections.ConfigDict()
  c.contrastive.encoder.image_size = 16  # must match the data's images
  c.contrastive.encoder.patch_size = 4
  c.contrastive.encoder.channels = 3
  c.contrastive.encoder.vision_width = 64
  c.contrastive.encoder.vision_depth = 2
  c.contrastive.encoder.vision_heads = 2
  c.contrastive.encoder.vision_mlp_dim = 128
  c.contrastive.encoder.pooling = "cls"  # cls | mean
  c.contrastive.encoder.embed_dim = 64
  c.seq_len = 8  # caption words + <eos>
  c.batch_size = 32
  c.data.source = "toy_pairs"
  c.data.toy_pairs = ml_collections.ConfigDict()
  c.data.toy_pairs.image_size = 16
  c.data.toy_pairs.num_options = 4
  c.data.toy_pairs.num_train_examples = 2048
  c.data.toy_pairs.num_val_examples = 256
  set_model_size(c, d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 20
  c.optim.decay_matrices_only = True  # CLIP: no weight decay on gains, biases, logit scale
  c.train.num_steps = 300
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.eval_steps = 4
  c.train.checkpoint_every = 100
  if arg == "tiny":
    c.batch_size = 16
    c.data.toy_pairs.image_size = c.contrastive.encoder.image_size = 8
    c.data.toy_pairs.num_train_examples = 256
    c.data.toy_pairs.num_val_examples = 32
    c.contrastive.encoder.update(vision_width=16, vision_depth=1, vision_mlp_dim=32,
                                 embed_dim=16)
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 5
    set_model_size(c, d_model=16, num_layers=1, num_heads=2, head_dim=8, mlp_dim=32)
    smoke_run(c)
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/contrastive.py; valid: 'tiny'")
  return c
