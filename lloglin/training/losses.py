"""Losses: token-level cross-entropy and the LM task's loss and eval sums; for reward models
pairwise Bradley-Terry and the squared differences of pointwise regression and of the
paraphrase-consistency regulariser (lloglin.training.tasks.reward combines them).

`lm_loss` and `lm_eval_sums` are functions of (model, batch), as every task's are
(lloglin.training.tasks); they live here, below the task registry, because the step functions
(lloglin.training.step) default to them.
"""

import jax
import jax.numpy as jnp


def masked_cross_entropy(logits_BTV, targets_BT, mask_BT):
  """Per-token cross-entropy (float32) and per-token correctness, zero where mask is 0."""
  logits_BTV = logits_BTV.astype(jnp.float32)
  logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  mask_BT = mask_BT.astype(jnp.float32)
  loss_BT = (logz_BT - target_logit_BT) * mask_BT
  correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT) * mask_BT
  return loss_BT, correct_BT


def _at_least_float32(x):
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def bradley_terry(r_chosen_B, r_rejected_B):
  """Per-pair Bradley-Terry loss -log sigmoid(r_chosen - r_rejected) = softplus(-(margin)), in
  float32 or wider; its mean is the reward model's loss."""
  return jax.nn.softplus(-_at_least_float32(r_chosen_B - r_rejected_B))


def squared_difference(a_B, b_B):
  """Per-row (a - b)^2 in float32 or wider: the regression error (reward, score) and the
  paraphrase-consistency term (reward of y, reward of its paraphrase). Both sides carry
  gradient: nothing is stopped."""
  return jnp.square(_at_least_float32(a_B - b_B))


def lm_token_stats(model, batch):
  """Per-token cross-entropy and correctness [B, T] (zero where unmasked), and the count of
  masked targets, of a DecoderLM on an LM batch (lloglin.data.make_dataset)."""
  logits_BTV = model(batch["inputs"], segment_ids_BT=batch["segment_ids"],
                     positions_BT=batch["positions"])
  loss_BT, correct_BT = masked_cross_entropy(logits_BTV, batch["targets"], batch["loss_mask"])
  return loss_BT, correct_BT, jnp.sum(batch["loss_mask"].astype(jnp.float32))


def lm_loss(model, batch):
  """Mean cross-entropy over the masked targets, and their accuracy."""
  loss_BT, correct_BT, count = lm_token_stats(model, batch)
  denom = jnp.maximum(count, 1.0)
  return loss_BT.sum() / denom, {"accuracy": correct_BT.sum() / denom}


def lm_eval_sums(model, batch):
  """Sums over one batch: loss, correct answers, counted tokens, and per-position loss/count."""
  loss_BT, correct_BT, count = lm_token_stats(model, batch)
  mask_BT = batch["loss_mask"].astype(jnp.float32)
  return {"loss_sum": loss_BT.sum(), "correct_sum": correct_BT.sum(), "count": count,
          "loss_T": loss_BT.sum(0), "count_T": mask_BT.sum(0)}
