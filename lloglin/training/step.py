"""The jitted train and eval steps, on a functional train state (NNX split into pytrees).

The state is a dict {"step", "params", "rest", "opt_state", "nonfinite_step"}: plain pytrees
that orbax saves and `jax.jit` shards. `nonfinite_step` is -1 until a step sees a non-finite
loss or gradient; that step's update is skipped and the loop stops with the step number.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lloglin.training.losses import masked_cross_entropy


def init_state(model: nnx.Module, tx: optax.GradientTransformation):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
           "opt_state": tx.init(params), "nonfinite_step": jnp.full((), -1, jnp.int32)}
  return graphdef, state


def model_logits(graphdef, params, rest, batch):
  model = nnx.merge(graphdef, params, rest)
  return model(batch["inputs"], segment_ids_BT=batch["segment_ids"],
               positions_BT=batch["positions"])


def batch_loss(graphdef, params, rest, batch):
  """Mean masked cross-entropy and the token-level statistics behind it."""
  logits_BTV = model_logits(graphdef, params, rest, batch)
  loss_BT, correct_BT = masked_cross_entropy(logits_BTV, batch["targets"], batch["loss_mask"])
  count = jnp.sum(batch["loss_mask"].astype(jnp.float32))
  denom = jnp.maximum(count, 1.0)
  return loss_BT.sum() / denom, {"loss_BT": loss_BT, "correct_BT": correct_BT, "count": count}


def make_train_step(graphdef, tx: optax.GradientTransformation):

  def train_step(state, batch):
    params, rest = state["params"], state["rest"]
    grad_fn = jax.value_and_grad(lambda p: batch_loss(graphdef, p, rest, batch), has_aux=True)
    (loss, aux), grads = grad_fn(params)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_old = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    step = state["step"]
    new_state = {
        "step": step + 1,
        "params": keep_old(new_params, params),
        "rest": rest,
        "opt_state": keep_old(opt_state, state["opt_state"]),
        "nonfinite_step": jnp.where((state["nonfinite_step"] < 0) & ~finite, step + 1,
                                    state["nonfinite_step"]),
    }
    metrics = {"loss": loss, "accuracy": aux["correct_BT"].sum() / jnp.maximum(aux["count"], 1.0),
               "grad_norm": grad_norm}
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef):
  """Sums over one batch: loss, correct answers, counted tokens, and per-position loss/count."""

  def eval_step(params, rest, batch):
    _, aux = batch_loss(graphdef, params, rest, batch)
    mask_BT = batch["loss_mask"].astype(jnp.float32)
    return {"loss_sum": aux["loss_BT"].sum(), "correct_sum": aux["correct_BT"].sum(),
            "count": aux["count"], "loss_T": aux["loss_BT"].sum(0), "count_T": mask_BT.sum(0)}

  return jax.jit(eval_step)
