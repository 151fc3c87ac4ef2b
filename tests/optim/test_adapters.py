"""The adapters θ = θ0 + Sᵀφ on plain pytrees and through an NNX model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lloglin import optim
from tests.optim import helpers

SPECS = {"l1": {"w": optim.ProjectionSpec(3, "left", "orthogonal"), "b": None},
         "l2": {"w": optim.ProjectionSpec((2, 3), "two_sided", "gaussian"),
                "b": optim.ProjectionSpec(2, "dense", "gaussian")}}


def test_shapes_merge_and_the_gradient_identity():
  with jax.enable_x64(True):
    params = helpers.mlp_params()
    batch = jax.tree.map(lambda x: x[0], helpers.batches(1))
    projections = optim.make_projections(SPECS, params, seed=2)
    adapters = optim.init_adapters(params, projections)
    shapes = jax.tree.map(jnp.shape, adapters)
    assert shapes == {"l1": {"w": (3, helpers.D_HID), "b": (helpers.D_HID,)},
                      "l2": {"w": (2, 3), "b": (2, 1)}}
    assert float(jnp.abs(adapters["l1"]["b"] - params["l1"]["b"]).max()) == 0  # trained as is
    effective = optim.apply_adapters(params, adapters, projections)
    assert helpers.max_abs_diff(effective, params) == 0
    # ∇φ L(θ0 + Sᵀφ) = S ∇θ L(θ): what makes the two views dual.
    adapters = jax.tree.map(lambda x: x + 0.1, adapters)
    loss = optim.loss_on_adapters(helpers.mlp_loss)

    @jax.jit
    def both_gradients(adapters):
      effective = optim.apply_adapters(params, adapters, projections)
      grads_theta = jax.grad(helpers.mlp_loss)(effective, batch)
      return (jax.grad(loss)(adapters, params, projections, batch),
              optim.project_tree(grads_theta, projections), effective)

    grads_phi, projected_grads_theta, effective = both_gradients(adapters)
    assert helpers.max_abs_diff(grads_phi, projected_grads_theta) < 1e-14
    # Merge-and-reinit keeps the effective parameters and zeroes the projected adapters.
    frozen, merged = optim.merge_adapters(params, adapters, projections)
    assert helpers.max_abs_diff(frozen, effective) == 0
    assert float(jnp.abs(merged["l2"]["w"]).max()) == 0
    assert helpers.max_abs_diff(merged["l1"]["b"], adapters["l1"]["b"]) == 0


def test_frozen_unprojected_parameters():
  params = helpers.mlp_params(dtype=jnp.float32)
  projections = optim.make_projections(SPECS, params)
  adapters = optim.init_adapters(params, projections, train_unprojected=False)
  assert adapters["l1"]["b"] is None
  assert optim.apply_adapters(params, adapters, projections)["l1"]["b"] is params["l1"]["b"]
  frozen, merged = optim.merge_adapters(params, adapters, projections)
  assert merged["l1"]["b"] is None and frozen["l1"]["b"] is params["l1"]["b"]
  tx = optax.adam(1e-3)
  state = optim.reset_projected_state(tx, tx.init(adapters), merged, projections)
  assert state[0].mu["l1"]["b"] is None


def test_refresh_needs_the_gradient_for_svd():
  params = helpers.mlp_params(dtype=jnp.float32)
  specs = {"l1": {"w": optim.ProjectionSpec(2, "left", "svd"), "b": None},
           "l2": {"w": None, "b": None}}
  projections = optim.make_projections(specs, params)
  adapters = optim.init_adapters(params, projections)
  tx = optax.adam(1e-3)
  with pytest.raises(ValueError, match="grads=None"):
    optim.refresh_adapters(params, adapters, projections, tx.init(adapters), tx=tx,
                           specs=specs)


class _MLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.l1 = nnx.Linear(6, 10, rngs=rngs)
    self.l2 = nnx.Linear(10, 4, rngs=rngs)

  def __call__(self, x):
    return self.l2(jnp.tanh(self.l1(x)))


def test_nnx_model_trains_through_adapters():
  model = _MLP(nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x, y = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32), jnp.zeros((32, 4))
  mse = lambda m, x, y: jnp.mean((m(x) - y) ** 2)
  loss, params = optim.nnx_adapter_loss(model, mse)
  specs = optim.specs_by_rule(params, optim.ProjectionSpec(2, "auto", "orthogonal"),
                              include="kernel$")
  projections = optim.make_projections(specs, params, seed=1)
  adapters = optim.init_adapters(params, projections)
  # auto: the (6, 10) kernel projects on the right (m < n), the (10, 4) one on the left.
  assert adapters["l1"]["kernel"].shape == (6, 2) and adapters["l2"]["kernel"].shape == (2, 4)
  assert float(loss(adapters, params, projections, x, y)) == pytest.approx(float(mse(model, x,
                                                                                     y)))
  tx = optax.adam(1e-2)

  @jax.jit
  def step(adapters, state):
    value, grads = jax.value_and_grad(loss)(adapters, params, projections, x, y)
    updates, state = tx.update(grads, state, adapters)
    return optax.apply_updates(adapters, updates), state, value

  state = tx.init(adapters)
  values = []
  for _ in range(20):
    adapters, state, value = step(adapters, state)
    values.append(float(value))
  assert values[-1] < 0.6 * values[0]
  # The trained weights go back into the model with nnx.update.
  nnx.update(model, optim.apply_adapters(params, adapters, projections))
  assert float(mse(model, x, y)) < values[-1]
