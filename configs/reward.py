"""A reward model (task "reward") learns the synthetic stay-on-topic preferences on CPU.

The chosen response only repeats words of the prompt; the rejected one has a word that is not in
it (lloglin/data/preferences.py). Chance accuracy is 0.5.
Variants:
- `:tiny`: a seconds-long smoke run for the tests.
- `:text`: preference pairs from a .jsonl file of {"prompt", "chosen", "rejected"} records
  (`--config.data.path=...`), byte tokens, with the model of configs/shakespeare.py, so that
  `--config.init_from=<that run's workdir>/export` starts the trunk from the trained LM.
Any mixer works: `--config.model.layer_pattern=gdn`.
The `reward` section picks the objective (lloglin/training/tasks/reward.py): Bradley-Terry on pairs
or regression on scored records (`--config.reward.objective=regression
--config.data.source=scored_jsonl --config.data.path=...`), with a paraphrase-consistency term
(`--config.reward.consistency_alpha=10`) or paraphrase augmentation; configs/rewordbench.py
trains the reWordBench variants.
"""

import ml_collections

from configs import shakespeare
from configs.base import get_base_config, set_model_size, smoke_run


def get_config(arg: str | None = None):
  c = get_base_config()
  c.task = "reward"
  c.reward = ml_collections.ConfigDict()
  c.reward.objective = "bradley_terry"  # bradley_terry (pairs) | regression (scored records)
  c.reward.consistency_alpha = 0.0  # weight of (r(x, y) - r(x, paraphrase of y))^2
  c.reward.augmentation = False  # the paraphrase as an extra example with the same score/label
  c.seq_len = 16
  c.batch_size = 64
  c.data.source = "synthetic_preferences"
  set_model_size(c, d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 20
  c.optim.weight_decay = 0.0
  c.train.num_steps = 600
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.checkpoint_every = 300
  if arg == "tiny":
    c.batch_size = 16
    c.data.preferences.num_val_examples = 64
    c.optim.warmup_steps = 5
    set_model_size(c, d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                   mlp_dim=64)
    smoke_run(c)
  elif arg == "text":
    lm = shakespeare.get_config()
    c.seq_len, c.batch_size, c.model = lm.seq_len, 16, lm.model
    c.data.source = "preference_jsonl"
    c.data.tokenizer = "byte"
    c.optim.learning_rate = 1e-4
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/reward.py; valid: 'tiny', 'text'")
  return c
