"""The `lm` task: next-token prediction with a DecoderLM on lloglin.data batches.

Batches map "inputs", "targets", "segment_ids", "positions" (int32) and "loss_mask" (float32)
to [batch, seq_len] arrays. The loss is the mean cross-entropy over masked targets; accuracy
counts the masked targets predicted exactly (on MQAR: the recalled values); the eval metrics add
perplexity and the per-position loss (which the `lm` suite plots).
"""

import math

import jax.numpy as jnp
import numpy as np

from lloglin.data import make_dataset
from lloglin.models import build_model
from lloglin.training.losses import lm_eval_sums, lm_loss
from lloglin.training.tasks.base import Task, register_task, summed_evaluation


def lm_metrics(totals: dict) -> dict:
  """Loss, perplexity and accuracy over the masked targets of the summed eval batches, and the
  loss at each position."""
  count = max(float(totals["count"]), 1.0)
  loss = float(totals["loss_sum"]) / count
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
          "eval_accuracy": float(totals["correct_sum"]) / count,
          "eval_tokens": int(totals["count"]),
          "eval_loss_per_position": (totals["loss_T"] / np.maximum(totals["count_T"], 1)).tolist()}


evaluate = summed_evaluation(lm_metrics)


def example_batch(seq_len: int) -> dict:
  zeros = jnp.zeros((1, seq_len), jnp.int32)
  return {"inputs": zeros, "targets": zeros, "segment_ids": zeros + 1, "positions": zeros,
          "loss_mask": jnp.ones((1, seq_len), jnp.float32)}


TASK = register_task(Task(
    name="lm", build_model=build_model, make_dataset=make_dataset, loss=lm_loss,
    eval_sums=lm_eval_sums, evaluate=evaluate, example_batch=example_batch))
