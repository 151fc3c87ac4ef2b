"""reWordBench (arXiv 2503.11751): reward models trained on the reward world
(lloglin/data/reward_world.py), standard against paraphrase-regularised.

`training_config(variant)`: `python train.py --config configs/rewordbench.py:<variant>`, one of
- pretrain: the trunk as a byte-level LM on the world's texts (task lm), as the paper's reward
  models start from a pretrained LM; the others start from it with
  `--config.init_from=<its workdir>/export` (the model sections match);
- standard: pointwise regression, (r(x, y) - s)^2;
- augment: regression plus the paraphrase as an extra example, + (r(x, y~) - s)^2;
- reg1, reg10: regression plus alpha (r(x, y) - r(x, y~))^2, alpha = 1 and 10 (the paper's);
- tiny: `standard` at smoke-test size (seconds on a CPU).
The seed (`--config.seed=1`) draws the model's initialisation, the world and the data order.
"""

from configs import reward
from configs.base import set_model_size, smoke_run

# variant: (consistency_alpha, augmentation)
REWARD_VARIANTS = {"standard": (0.0, False), "augment": (0.0, True), "reg1": (1.0, False),
                   "reg10": (10.0, False), "tiny": (0.0, False)}
TRAINING_VARIANTS = ("pretrain",) + tuple(REWARD_VARIANTS)


def training_config(variant: str):
  if variant not in TRAINING_VARIANTS:
    raise ValueError(f"unknown training variant {variant!r} of configs/rewordbench.py; valid: "
                     f"{list(TRAINING_VARIANTS)}")
  c = reward.get_config()
  c.reward.objective = "regression"
  c.data.source = "reward_world"
  c.data.tokenizer = "byte"
  c.seq_len = 72  # the world's rows take at most 70 bytes and BOS/EOS
  c.batch_size = 32
  set_model_size(c, d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
  c.model.max_seq_len = 256  # the eval's transforms lengthen rows beyond the training length
  c.optim.learning_rate = 1e-3  # at 3e-3 and alpha = 10 the rewards collapse to a constant
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.0
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.eval_steps = 16
  c.train.checkpoint_every = 500
  if variant == "pretrain":
    c.task = "lm"
    c.data.reward_world.num_train_examples = 40_000  # 80k texts, about 3.6M bytes
    c.data.reward_world.num_val_examples = 200
    c.train.eval_steps = 8
    return c
  c.reward.consistency_alpha, c.reward.augmentation = REWARD_VARIANTS[variant]
  if variant == "tiny":
    c.batch_size = 8
    c.data.reward_world.num_val_examples = 32
    c.optim.warmup_steps = 5
    set_model_size(c, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                   mlp_dim=64)
    c.model.max_seq_len = 256
    smoke_run(c)
  return c


def get_config(arg: str | None = None):
  return training_config(arg or "standard")
