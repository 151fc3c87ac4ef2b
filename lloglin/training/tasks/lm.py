"""The `lm` task: next-token prediction with a DecoderLM on lloglin.data batches.

Batches map "inputs", "targets", "segment_ids", "positions" (int32) and "loss_mask" (float32)
to [batch, seq_len] arrays. The loss is the mean cross-entropy over masked targets; accuracy
counts the masked targets predicted exactly (on MQAR: the recalled values).
"""

import jax.numpy as jnp

from lloglin.data import make_dataset
from lloglin.evals.lm import evaluate
from lloglin.models import build_model
from lloglin.training.losses import masked_cross_entropy
from lloglin.training.tasks.base import Task, register_task


def token_stats(model, batch):
  """Per-token cross-entropy and correctness [B, T] (zero where unmasked), and the count of
  masked targets."""
  logits_BTV = model(batch["inputs"], segment_ids_BT=batch["segment_ids"],
                     positions_BT=batch["positions"])
  loss_BT, correct_BT = masked_cross_entropy(logits_BTV, batch["targets"], batch["loss_mask"])
  return loss_BT, correct_BT, jnp.sum(batch["loss_mask"].astype(jnp.float32))


def loss(model, batch):
  loss_BT, correct_BT, count = token_stats(model, batch)
  denom = jnp.maximum(count, 1.0)
  return loss_BT.sum() / denom, {"accuracy": correct_BT.sum() / denom}


def eval_sums(model, batch):
  """Sums over one batch: loss, correct answers, counted tokens, and per-position loss/count."""
  loss_BT, correct_BT, count = token_stats(model, batch)
  mask_BT = batch["loss_mask"].astype(jnp.float32)
  return {"loss_sum": loss_BT.sum(), "correct_sum": correct_BT.sum(), "count": count,
          "loss_T": loss_BT.sum(0), "count_T": mask_BT.sum(0)}


def example_batch(seq_len: int) -> dict:
  zeros = jnp.zeros((1, seq_len), jnp.int32)
  return {"inputs": zeros, "targets": zeros, "segment_ids": zeros + 1, "positions": zeros,
          "loss_mask": jnp.ones((1, seq_len), jnp.float32)}


TASK = register_task(Task(
    name="lm", build_model=build_model, make_dataset=make_dataset, loss=loss,
    eval_sums=eval_sums, evaluate=evaluate, example_batch=example_batch))
