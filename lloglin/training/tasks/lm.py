"""The `lm` task: next-token prediction with a DecoderLM on lloglin.data batches.

Batches map "inputs", "targets", "segment_ids", "positions" (int32) and "loss_mask" (float32)
to [batch, seq_len] arrays. The loss is the mean cross-entropy over masked targets; accuracy
counts the masked targets predicted exactly (on MQAR: the recalled values); lloglin.evals.lm
adds perplexity and the per-position loss to the eval metrics.
"""

import jax.numpy as jnp

from lloglin.data import make_dataset
from lloglin.evals.lm import evaluate
from lloglin.models import build_model
from lloglin.training.losses import lm_eval_sums, lm_loss
from lloglin.training.tasks.base import Task, register_task


def example_batch(seq_len: int) -> dict:
  zeros = jnp.zeros((1, seq_len), jnp.int32)
  return {"inputs": zeros, "targets": zeros, "segment_ids": zeros + 1, "positions": zeros,
          "loss_mask": jnp.ones((1, seq_len), jnp.float32)}


TASK = register_task(Task(
    name="lm", build_model=build_model, make_dataset=make_dataset, loss=lm_loss,
    eval_sums=lm_eval_sums, evaluate=evaluate, example_batch=example_batch))
