"""A 2-layer MLP regression problem and the two training views of the optimizer duality
(docs/literature.md#optimizer-duality), for the tests.

`run_projected` trains θ with low_rank_projection(opt, specs); `run_adapters` trains φ in
θ = θ0 + Sᵀφ with the same optimizer, refreshing at the same steps. Both return the parameter
trajectory (one params tree per step, stacked on a leading axis).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lloglin import optim

D_IN, D_HID, D_OUT, BATCH = 6, 10, 4, 32


def mlp_params(seed: int = 0, dtype=jnp.float64):
  rng = np.random.default_rng(seed)
  return {
      "l1": {"w": jnp.asarray(rng.normal(size=(D_IN, D_HID)) / np.sqrt(D_IN), dtype),
             "b": jnp.asarray(0.1 * rng.normal(size=(D_HID,)), dtype)},
      "l2": {"w": jnp.asarray(rng.normal(size=(D_HID, D_OUT)) / np.sqrt(D_HID), dtype),
             "b": jnp.asarray(0.1 * rng.normal(size=(D_OUT,)), dtype)},
  }


def mlp_loss(params, batch):
  x_BI, y_BO = batch
  h_BH = jnp.tanh(x_BI @ params["l1"]["w"] + params["l1"]["b"])
  return jnp.mean((h_BH @ params["l2"]["w"] + params["l2"]["b"] - y_BO) ** 2)


def batches(num_steps: int, seed: int = 1, dtype=jnp.float64):
  """(x, y) per step, stacked on a leading axis: y is a fixed random nonlinear map of x plus
  noise."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_steps, BATCH, D_IN))
  a = rng.normal(size=(D_IN, D_OUT))
  y = np.sin(x @ a) + 0.1 * rng.normal(size=(num_steps, BATCH, D_OUT))
  return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def run_projected(tx, params, data, loss=mlp_loss):
  """θ under `tx`, one call of tx.update per batch of `data` (stacked on a leading axis).

  Returns the trajectory (params after each call, stacked) and the final state. One jitted
  scan, so a run costs one compilation.
  """

  def body(carry, batch):
    params, state = carry
    updates, state = tx.update(jax.grad(loss)(params, batch), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), params

  @jax.jit
  def run(params, data):
    (_, state), trajectory = jax.lax.scan(body, (params, tx.init(params)), data)
    return trajectory, state

  return run(params, data)


def run_adapters(opt, params, data, *, specs, refresh_every=0, reset=False, seed=0,
                 accumulate_steps=1, loss=mlp_loss):
  """θ0 + Sᵀφ with φ trained by `opt`, one call of opt.update per batch of `data`.

  Refreshes (merge, new S, optionally reset the moments) happen where low_rank_projection
  refreshes: before optimizer steps k * refresh_every; with accumulate_steps > 1 (an
  optax.MultiSteps `opt`) an optimizer step spans that many calls. Returns the trajectory of
  the effective parameters.
  """
  adapter_loss = optim.loss_on_adapters(loss)

  def refresh(carry, step, batch):
    frozen, adapters, projections, state = carry
    # The full gradient at the effective parameters is the gradient wrt θ0.
    grads = jax.grad(adapter_loss, argnums=1)(adapters, frozen, projections, batch)
    return optim.refresh_adapters(frozen, adapters, projections, state, tx=opt, specs=specs,
                                  grads=grads, seed=seed,
                                  refresh_index=optim.refresh_index(step, refresh_every),
                                  reset_state=reset)

  def body(carry, inputs):
    t, batch = inputs
    step, micro = jnp.divmod(t, accumulate_steps)
    # At step 0 this "refresh" merges zero adapters into θ0 and makes the first S, so the
    # projection code is compiled once.
    needs_refresh = (micro == 0) & optim.is_refresh_step(step, refresh_every)
    carry = jax.lax.cond(needs_refresh, lambda: refresh(carry, step, batch), lambda: carry)
    frozen, adapters, projections, state = carry
    updates, state = opt.update(jax.grad(adapter_loss)(adapters, frozen, projections, batch),
                                state, adapters)
    adapters = optax.apply_updates(adapters, updates)
    effective = optim.apply_adapters(frozen, adapters, projections)
    return (frozen, adapters, projections, state), effective

  @jax.jit
  def run(params, data):
    projections = optim.make_projections(specs, params, zeros=True)
    adapters = optim.init_adapters(params, projections)
    carry = (params, adapters, projections, opt.init(adapters))
    num_calls = jax.tree.leaves(data)[0].shape[0]
    return jax.lax.scan(body, carry, (jnp.arange(num_calls), data))[1]

  return run(params, data)


def max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
