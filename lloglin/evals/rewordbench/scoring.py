"""Scorers: `scorer(prompts, responses) -> rewards`, one float per (prompt, response) pair.

- `checkpoint_scorer(model, train_config)`: a lloglin reward model (lloglin.models.reward); each
  pair encoded as its training run encoded text pairs (lloglin.data.preferences.encode_row, the
  run's tokenizer), in batches of one shape (one compilation). Rows are padded to the model's
  max_seq_len, which may exceed the training seq_len: padding never changes a reward (the trunk
  is causal, the reward is read at the last token), so a row that fits the training length
  scores as in training, and a transform that lengthens a row is scored where the model allows.
- `function_scorer("module:function")`: any Python function of the same signature.
`score_texts` checks what a scorer returns.
"""

from typing import Callable

import jax
import ml_collections
import numpy as np

from lloglin.data import make_tokenizer
from lloglin.data.preferences import encode_row, pack_rows
from lloglin.evals.userfn import import_function
from lloglin.models.reward import RewardModel

Scorer = Callable[[list[str], list[str]], np.ndarray]


@jax.jit
def _rewards(model, tokens_BT, segment_ids_BT):
  return model(tokens_BT, segment_ids_BT=segment_ids_BT)


def checkpoint_scorer(model, train_config: dict, *, batch_size: int) -> Scorer:
  """A scorer from a trained reward model and its run's config (lloglin.training.loading)."""
  if not isinstance(model, RewardModel):
    raise ValueError(f"the checkpoint holds a {type(model).__name__} (task "
                     f"{train_config.get('task', 'lm')!r}); scorer='checkpoint' expects a reward "
                     "model (a reward task run)")
  data = ml_collections.ConfigDict(train_config["data"])
  tokenizer = make_tokenizer(data)
  if tokenizer is None or data.source == "synthetic_preferences":
    raise ValueError(f"the checkpoint was trained on data.source={data.source!r}, whose tokens "
                     "are not text: it cannot score text pairs")
  seq_len = model.cfg.max_seq_len

  def score(prompts: list[str], responses: list[str]) -> np.ndarray:
    rows = [encode_row(tokenizer, p, r, seq_len, where=f"the response {r[:40]!r}...")
            for p, r in zip(prompts, responses)]
    out = []
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      # pack_rows pads rows as training does; empty rows fill the batch to one shape.
      batch = pack_rows({"row": chunk + [[]] * (batch_size - len(chunk))}, seq_len)
      r_B = _rewards(model, batch["row"], batch["row_segment_ids"])
      out.append(np.asarray(r_B)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros(0)

  return score


def function_scorer(spec: str) -> Scorer:
  """The user function that `spec` ("module:function" or "file.py:function") names."""
  return import_function(spec, what="rewordbench.scorer")


def score_texts(scorer: Scorer, prompts: list[str], responses: list[str]) -> np.ndarray:
  """[N] float64 rewards; a scorer returning anything but N finite numbers is a ValueError."""
  r = np.asarray(scorer(list(prompts), list(responses)), np.float64)
  if r.shape != (len(prompts),) or not np.isfinite(r).all():
    raise ValueError(f"the scorer returned {r.shape} values ({np.isfinite(r).sum()} finite) for "
                     f"{len(prompts)} (prompt, response) pairs; expected {len(prompts)} finite "
                     "numbers")
  return r
