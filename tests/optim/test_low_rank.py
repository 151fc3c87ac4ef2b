"""low_rank_projection: against optax.contrib.galore, state sizes, refresh policies, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lloglin import optim
from tests.optim import helpers


def _params():
  # "tall" (m >= n: GaLore projects on the left), "wide" (right) and a bias (not projected).
  rng = np.random.default_rng(0)
  return {"tall": jnp.asarray(rng.normal(size=(12, 5)), jnp.float32),
          "wide": jnp.asarray(rng.normal(size=(5, 10)), jnp.float32),
          "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}


def _quadratic_loss(params, batch):
  """A least-squares loss whose gradients change with the batch (so the SVDs change)."""
  a, b = batch
  return (jnp.sum((a @ params["tall"] @ params["wide"] - b) ** 2)
          + jnp.sum(jnp.tanh(params["bias"] * a[0, :5]) ** 2))


def test_matches_optax_contrib_galore():
  # Where the definitions coincide (rank <= min(m, n), GaLore's side rule, SVD of each refresh
  # step's gradient, moments kept), the trajectories agree (bitwise on CPU today).
  steps, lr, rank, gap = 25, 1e-2, 3, 10
  rng = np.random.default_rng(1)
  data = (jnp.asarray(rng.normal(size=(steps, 6, 12)), jnp.float32),
          jnp.asarray(rng.normal(size=(steps, 6, 10)), jnp.float32))
  params = _params()
  specs = {"tall": optim.ProjectionSpec(rank), "wide": optim.ProjectionSpec(rank), "bias": None}
  ours = optax.chain(
      optim.low_rank_projection(optax.scale_by_adam(), specs, refresh_every=gap),
      optax.scale_by_learning_rate(lr))
  theirs = optax.contrib.galore(lr, rank=rank, update_proj_gap=gap,
                                base_optimizer=optax.scale_by_adam())
  got, state = helpers.run_projected(ours, params, data, loss=_quadratic_loss)
  expected, their_state = helpers.run_projected(theirs, params, data, loss=_quadratic_loss)
  for name in params:
    np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6)
    assert float(jnp.max(jnp.abs(got[name][-1] - params[name]))) > 1e-2
  projections = state[0].projections
  np.testing.assert_allclose(projections["tall"].p, their_state[0].projector["tall"], atol=1e-5)
  np.testing.assert_allclose(projections["wide"].q, their_state[0].projector["wide"], atol=1e-5)


def test_state_sizes():
  with jax.enable_x64(True):
    params = {"w": jnp.zeros((12, 7)), "v": jnp.zeros((9, 6)), "k": jnp.zeros((10, 8)),
              "b": jnp.zeros((7,))}
    specs = {"w": optim.ProjectionSpec(3, "left", "gaussian"),
             "v": optim.ProjectionSpec(2, "right", "gaussian"),
             "k": optim.ProjectionSpec((4, 5), "two_sided", "gaussian"), "b": None}
    tx = optim.low_rank_projection(optax.adam(1e-3), specs)
    state = tx.init(params)
    adam = state.inner_state[0]
    for moments in (adam.mu, adam.nu):
      assert moments["w"].size == 3 * 7  # r * n
      assert moments["v"].size == 9 * 2  # m * r
      assert moments["k"].size == 4 * 5  # r1 * r2
      assert moments["b"].size == 7
    groups = optim.optimizer_state_bytes(state, params)
    assert groups["state_low_rank"] == 2 * 8 * (3 * 7 + 9 * 2 + 4 * 5)
    assert groups["state_full"] == 2 * 8 * 7
    assert groups["projections"] == 8 * (12 * 3 + 6 * 2 + 10 * 4 + 8 * 5)
    assert groups["params"] == 8 * (12 * 7 + 9 * 6 + 10 * 8 + 7)
    assert groups["other"] == 4 * 3  # count, micro_step, Adam's count
    assert groups["accumulators"] == 0
    accumulating = optim.low_rank_projection(optax.adam(1e-3), specs, accumulate_steps=4)
    groups = optim.optimizer_state_bytes(jax.eval_shape(accumulating.init, params), params)
    assert groups["accumulators"] == 8 * (3 * 7 + 9 * 2 + 4 * 5 + 7)


def test_tree_map_params_sees_the_low_rank_entries():
  # optax.tree_map_params (used to build optimizer-state shardings) works through the state.
  params = {"w": jnp.zeros((8, 6)), "b": jnp.zeros((6,))}
  specs = {"w": optim.ProjectionSpec(2, "left", "gaussian"), "b": None}
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optim.low_rank_projection(optax.adam(1e-3), specs, accumulate_steps=2))
  shapes = optax.tree_map_params(tx, lambda x: x.shape, tx.init(params),
                                 transform_non_params=lambda _: None)
  low_rank_state = shapes[1]
  assert low_rank_state.inner_state[0].mu == {"w": (2, 6), "b": (6,)}
  assert low_rank_state.accumulator == {"w": (2, 6), "b": (6,)}


def _run_steps(tx, params, grads_list):
  update = jax.jit(tx.update)
  state, states = tx.init(params), []
  for g in grads_list:
    _, state = update(g, state)
    states.append(state)
  return states


def test_refresh_schedule_and_policies():
  params = {"w": jnp.zeros((8, 6)), "b": jnp.zeros((6,))}
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
           for _ in range(7)]
  specs = {"w": optim.ProjectionSpec(2, "left", "orthogonal"), "b": None}
  keep = _run_steps(optim.low_rank_projection(optax.adam(1e-3), specs, refresh_every=3),
                    params, grads)
  reset = _run_steps(optim.low_rank_projection(optax.adam(1e-3), specs, refresh_every=3,
                                               refresh_policy="reset"), params, grads)
  never = _run_steps(optim.low_rank_projection(optax.adam(1e-3), specs), params, grads)
  p = lambda states, t: np.asarray(states[t].projections["w"].p)
  # New factors at steps 0, 3, 6 (the state after step t holds the factors used at step t).
  for t in (1, 2, 4, 5):
    np.testing.assert_array_equal(p(keep, t), p(keep, t - 1))
  for t in (3, 6):
    assert not np.allclose(p(keep, t), p(keep, t - 1))
  np.testing.assert_array_equal(p(keep, 3), p(reset, 3))
  for t in range(1, 7):
    np.testing.assert_array_equal(p(never, t), p(never, 0))
  # "reset" restarts the projected moments at a refresh: mu = (1 - b1) S g. The bias keeps its
  # moments, and Adam's step count (shared by all parameters) is not reset.
  mu = lambda states, t, name: np.asarray(states[t].inner_state[0].mu[name])
  low = np.asarray(optim.project(grads[3]["w"], keep[3].projections["w"]))
  np.testing.assert_allclose(mu(reset, 3, "w"), 0.1 * low, rtol=1e-5)
  assert not np.allclose(mu(keep, 3, "w"), 0.1 * low, rtol=1e-2)
  np.testing.assert_allclose(mu(reset, 3, "b"), mu(keep, 3, "b"), rtol=1e-6)
  assert int(reset[3].inner_state[0].count) == 4


def test_accumulation_emits_every_kth_call():
  params = {"w": jnp.ones((6, 4))}
  tx = optim.low_rank_projection(optax.sgd(1.0), {"w": optim.ProjectionSpec(2, "left",
                                                                            "gaussian")},
                                 accumulate_steps=3)
  update = jax.jit(tx.update)
  state = tx.init(params)
  outputs = []
  for t in range(6):
    updates, state = update({"w": jnp.full((6, 4), float(t))}, state)
    outputs.append(np.abs(np.asarray(updates["w"])).max())
  assert [o > 0 for o in outputs] == [False, False, True, False, False, True]
  assert int(state.count) == 2 and int(state.micro_step) == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(refresh_policy="forget"), "refresh_policy='forget'"),
    (dict(refresh_every=-1), "refresh_every=-1"),
    (dict(accumulate_steps=0), "accumulate_steps=0"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optim.low_rank_projection(optax.adam(1e-3), {"w": None}, **kwargs)


def test_rank_too_large_is_reported_at_init():
  tx = optim.low_rank_projection(optax.adam(1e-3), {"w": optim.ProjectionSpec(9, "left")})
  with pytest.raises(ValueError, match=r"rank=9 for parameter 'w'"):
    tx.init({"w": jnp.zeros((8, 16))})
