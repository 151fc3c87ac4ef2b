"""Losses: token-level cross-entropy (LM), pairwise Bradley-Terry (reward models)."""

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


def bradley_terry(r_chosen_B, r_rejected_B):
  """Per-pair Bradley-Terry loss -log sigmoid(r_chosen - r_rejected) = softplus(-(margin)), in
  float32 or wider; its mean is the reward model's loss."""
  margin_B = jnp.asarray(r_chosen_B - r_rejected_B)
  margin_B = margin_B.astype(jnp.promote_types(margin_B.dtype, jnp.float32))
  return jax.nn.softplus(-margin_B)
