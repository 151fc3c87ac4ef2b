"""The `reward` task: a sequence-scoring reward model trained on preference pairs.

Model: lloglin.models.reward.RewardModel (the decoder trunk of any mixer, a scalar head read at
the last non-padding token). Batches: lloglin.data.preferences (chosen / rejected rows with their
segment ids). Loss: Bradley-Terry, the mean of softplus(-(r_chosen - r_rejected)); chosen and
rejected run through one forward, stacked on the batch axis. Logged terms: accuracy (the
fraction of pairs with r_chosen > r_rejected; a tie counts as wrong) and margin (the mean of
r_chosen - r_rejected). `init_from` loads an LM export into the trunk and drops its LM head.
"""

import jax.numpy as jnp

from lloglin.data.preferences import make_preference_dataset
from lloglin.models.reward import build_reward_model
from lloglin.training.losses import bradley_terry
from lloglin.training.tasks.base import Task, register_task, summed_evaluation


def pair_rewards(model, batch):
  """(r_chosen [B], r_rejected [B]) from one forward over the 2B rows."""
  B = batch["chosen"].shape[0]
  tokens_NT = jnp.concatenate([batch["chosen"], batch["rejected"]])
  segment_ids_NT = jnp.concatenate([batch["chosen_segment_ids"], batch["rejected_segment_ids"]])
  r_N = model(tokens_NT, segment_ids_BT=segment_ids_NT)
  return r_N[:B], r_N[B:]


def loss(model, batch):
  r_chosen_B, r_rejected_B = pair_rewards(model, batch)
  margin_B = r_chosen_B - r_rejected_B
  return bradley_terry(r_chosen_B, r_rejected_B).mean(), {
      "accuracy": (margin_B > 0).mean(dtype=jnp.float32), "margin": margin_B.mean()}


def eval_sums(model, batch):
  r_chosen_B, r_rejected_B = pair_rewards(model, batch)
  margin_B = r_chosen_B - r_rejected_B
  return {"loss_sum": bradley_terry(r_chosen_B, r_rejected_B).sum(),
          "correct_sum": (margin_B > 0).sum(dtype=jnp.float32), "margin_sum": margin_B.sum(),
          "count": jnp.asarray(margin_B.shape[0], jnp.float32)}


def eval_metrics(totals: dict) -> dict:
  count = max(float(totals["count"]), 1.0)
  return {"eval_loss": float(totals["loss_sum"]) / count,
          "eval_accuracy": float(totals["correct_sum"]) / count,
          "eval_margin": float(totals["margin_sum"]) / count,
          "eval_pairs": int(totals["count"])}


def example_batch(seq_len: int) -> dict:
  zeros, ones = jnp.zeros((1, seq_len), jnp.int32), jnp.ones((1, seq_len), jnp.int32)
  return {"chosen": zeros, "chosen_segment_ids": ones, "rejected": zeros,
          "rejected_segment_ids": ones}


TASK = register_task(Task(
    name="reward", build_model=build_reward_model, make_dataset=make_preference_dataset,
    loss=loss, eval_sums=eval_sums, evaluate=summed_evaluation(eval_metrics),
    example_batch=example_batch, lm_part=lambda model: model.trunk, drops_lm_head=True,
    sequences_per_row=2))
