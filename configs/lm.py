"""Settings of the `lm` suite (lloglin/evals/lm): metrics and generation for a trained LM.

  python eval.py --checkpoint runs/x                             # the defaults below
  python eval.py --suite lm --config configs/lm.py:tiny --checkpoint runs/x \
      --config.prompt="ROMEO:" --config.temperature=0.8

Every key also has a shorthand flag: `--prompt=X` sets `--config.prompt=X`.
The model and its data come from the checkpoint; `data_path` evaluates on other text.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.suite = "lm"
  c.num_batches = 20  # validation batches for the metrics (0 = skip the metrics)
  c.batch_size = 0  # sequences per batch (0 = the training batch size)
  c.data_path = ""  # a .txt / .jsonl file or folder to evaluate on ("" = the training data)
  c.prompt = config_dict.placeholder(str)  # generate a continuation of this text (None = no)
  c.max_new_tokens = 100
  c.temperature = 0.0  # 0 = greedy
  c.top_k = 0  # sample among the k most likely tokens (0 = all)
  c.top_p = 1.0  # nucleus sampling mass (1 = off)
  c.seed = 0  # sampling seed
  c.decode_impl = "auto"  # plain | fused (whole-model kernel, attention-only) | auto
  if arg == "tiny":  # seconds on a CPU: tests and smoke runs
    c.num_batches = 2
    c.max_new_tokens = 8
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/lm.py; valid: 'tiny'")
  return c
