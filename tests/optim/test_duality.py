"""Transformed-gradient training == adapter training, in float64
(docs/literature.md#optimizer-duality).

Each test runs the two views on the 2-layer MLP of `helpers` and compares the parameter
trajectories step by step; the caveats (decoupled weight decay, global-norm clipping,
mismatched refresh policies) are checked to break the equality the way that page says.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lloglin import optim
from tests.optim import helpers

NUM_STEPS = 120
REFRESH_EVERY = 40
TOL = 1e-12

# Which S each parameter gets. Each mix covers several kinds of S at once (unprojected biases
# are trained directly in both views); "dense" is a dense S on every leaf's flattened vector.
MIXES = {
    "one_sided": {"l1": {"w": optim.ProjectionSpec(2, "left", "svd"), "b": None},
                  "l2": {"w": optim.ProjectionSpec(2, "right", "gaussian"), "b": None}},
    "dense": {"l1": {"w": optim.ProjectionSpec(5, "dense", "gaussian"),
                     "b": optim.ProjectionSpec(3, "dense", "orthogonal")},
              "l2": {"w": optim.ProjectionSpec(4, "dense", "orthogonal"),
                     "b": optim.ProjectionSpec(2, "dense", "gaussian")}},
    "kronecker": {"l1": {"w": optim.ProjectionSpec((2, 3), "two_sided", "orthogonal"), "b": None},
                  "l2": {"w": optim.ProjectionSpec((2, 3), "two_sided", "svd"), "b": None}},
}


def make_opt(name: str, mix: str):
  if name == "sgd_momentum":
    return optax.sgd(5e-2, momentum=0.9)
  # With P and Q the singular vectors of G, PᵀGQ is diagonal: its off-diagonal entries are
  # rounding noise (~1e-17, computed differently in the two views) that Adam's first step
  # divides by eps. eps = 1e-5 keeps the amplified noise (lr / eps * 1e-17) near 1e-14.
  return optax.adam(1e-2, eps=1e-5 if mix == "kronecker" else 1e-8)


@functools.cache
def projected_run(opt_name, policy, mix):
  """The transformed-gradient trajectory (cached: two tests share one)."""
  params, data = helpers.mlp_params(), helpers.batches(NUM_STEPS)
  tx = optim.low_rank_projection(make_opt(opt_name, mix), MIXES[mix],
                                 refresh_every=REFRESH_EVERY, refresh_policy=policy)
  return jax.tree.map(np.asarray, helpers.run_projected(tx, params, data)[0])


def adapter_run(opt_name, policy, mix):
  params, data = helpers.mlp_params(), helpers.batches(NUM_STEPS)
  return helpers.run_adapters(make_opt(opt_name, mix), params, data, specs=MIXES[mix],
                              refresh_every=REFRESH_EVERY, reset=policy == "reset")


# Adam with both refresh policies on every mix; SGD with momentum on every mix, alternating
# the policies (each run compiles two programs, the suite's main cost).
RUNS = ([("adam", policy, mix) for policy in ("keep", "reset") for mix in MIXES]
        + [("sgd_momentum", "reset", "one_sided"), ("sgd_momentum", "keep", "dense"),
           ("sgd_momentum", "reset", "kronecker")])


@pytest.mark.parametrize("opt_name,policy,mix", RUNS)
def test_trajectories_equal(opt_name, policy, mix):
  with jax.enable_x64(True):
    params = helpers.mlp_params()
    projected = projected_run(opt_name, policy, mix)
    adapted = adapter_run(opt_name, policy, mix)
    assert helpers.max_abs_diff(projected, adapted) <= TOL
    # The runs train something (every leaf moves), so the comparison could fail.
    for x0, traj in zip(jax.tree.leaves(params), jax.tree.leaves(projected)):
      assert float(jnp.max(jnp.abs(traj[-1] - x0))) > 1e-3


def test_mismatched_refresh_policy_breaks_equality_at_the_first_refresh():
  # GaLore keeps the moments across a refresh; an adapter restart that resets them agrees only
  # until that refresh.
  with jax.enable_x64(True):
    projected = projected_run("adam", "keep", "one_sided")
    adapted = adapter_run("adam", "reset", "one_sided")
    before = jax.tree.map(lambda x: x[:REFRESH_EVERY], projected)
    before_adapted = jax.tree.map(lambda x: x[:REFRESH_EVERY], adapted)
    assert helpers.max_abs_diff(before, before_adapted) <= TOL
    assert helpers.max_abs_diff(projected, adapted) > 1e-4


def _one_sgd_step(projected_tx, adapter_tx):
  params, data = helpers.mlp_params(), helpers.batches(1)
  specs = MIXES["one_sided"]
  projected, _ = helpers.run_projected(projected_tx(specs), params, data)
  adapted = helpers.run_adapters(adapter_tx, params, data, specs=specs)
  first = lambda tree: jax.tree.map(lambda x: x[0], tree)
  return params, specs, first(projected), first(adapted)


def test_weight_decay_on_theta_vs_on_phi():
  # Projected view: θ1 = θ0 - η(SᵀS g + λθ0). Adapter view: φ1 = -η(S g + λφ0) with φ0 = 0, so
  # θ1 = θ0 - η SᵀS g. They differ by exactly ηλθ0 on the projected weights; the biases are
  # trained directly in both views and decay the same way.
  lr, wd = 0.1, 0.3
  with jax.enable_x64(True):
    params, specs, projected, adapted = _one_sgd_step(
        lambda specs: optax.chain(optim.low_rank_projection(optax.identity(), specs),
                                  optax.add_decayed_weights(wd), optax.scale(-lr)),
        optax.chain(optax.add_decayed_weights(wd), optax.scale(-lr)))
    for path in (("l1", "w"), ("l2", "w")):
      get = lambda t: t[path[0]][path[1]]
      np.testing.assert_allclose(get(adapted) - get(projected), lr * wd * get(params),
                                 rtol=0, atol=TOL)
      assert float(jnp.max(jnp.abs(get(adapted) - get(projected)))) > 1e-3
    for path in (("l1", "b"), ("l2", "b")):
      assert float(jnp.max(jnp.abs(adapted[path[0]][path[1]] - projected[path[0]][path[1]]))) <= TOL


def test_clipping_on_the_full_gradient_vs_on_the_projected_one():
  # clip_by_global_norm scales by c / ‖g‖. The projected view clips the full gradient, the
  # adapter view clips (S g, biases' g), whose norm is smaller, so every leaf's first step
  # differs by the ratio of the two norms.
  lr, clip = 0.1, 1e-3
  with jax.enable_x64(True):
    params, specs, projected, adapted = _one_sgd_step(
        lambda specs: optax.chain(optax.clip_by_global_norm(clip),
                                  optim.low_rank_projection(optax.identity(), specs),
                                  optax.scale(-lr)),
        optax.chain(optax.clip_by_global_norm(clip), optax.scale(-lr)))

    @jax.jit
    def norms(params, batch):
      grads = jax.grad(helpers.mlp_loss)(params, batch)
      projections = optim.make_projections(specs, grads)
      return optax.tree.norm(grads), optax.tree.norm(optim.project_tree(grads, projections))

    norm_full, norm_low = norms(params, jax.tree.map(lambda x: x[0], helpers.batches(1)))
    assert norm_low < norm_full - 1e-3
    step_projected = jax.tree.map(jnp.subtract, projected, params)
    step_adapted = jax.tree.map(jnp.subtract, adapted, params)
    chex.assert_trees_all_close(
        step_projected, jax.tree.map(lambda x: x * norm_low / norm_full, step_adapted),
        rtol=1e-10, atol=1e-15)


def test_clipping_in_the_projected_space_keeps_equality():
  # Clipping inside the inner transform sees S g, as the adapter view's clipping sees ∇φ.
  lr, clip = 0.5, 1e-2
  opt = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr, momentum=0.9))
  with jax.enable_x64(True):
    params, data = helpers.mlp_params(), helpers.batches(NUM_STEPS)
    specs = MIXES["one_sided"]
    tx = optim.low_rank_projection(opt, specs, refresh_every=REFRESH_EVERY)
    projected, _ = helpers.run_projected(tx, params, data)
    adapted = helpers.run_adapters(opt, params, data, specs=specs,
                                   refresh_every=REFRESH_EVERY)
    assert helpers.max_abs_diff(projected, adapted) <= TOL
    # Clipping was active: unclipped, the first step would be lr * ‖S g‖ ~ 0.1.
    first_step = jax.tree.map(lambda x, x0: x[0] - x0, projected, params)
    assert 0 < float(optax.tree.norm(first_step)) < 1.5 * lr * clip


def test_microbatch_accumulation_in_the_low_rank_space():
  # Two microbatches per optimizer step, summed as S g in R^r, against adapters whose
  # (already low-rank) gradients optax.MultiSteps accumulates. Random S: an SVD refresh would
  # see only the first microbatch. SGD with momentum: with Adam, MultiSteps' running mean and
  # sum / k round differently, which eps amplifies. (test_factory checks accumulation against
  # whole-batch steps.)
  k, steps = 2, 40
  opt = optax.sgd(5e-2, momentum=0.9)
  with jax.enable_x64(True):
    params, data = helpers.mlp_params(), helpers.batches(steps)
    micro = jax.tree.map(lambda x: x.reshape(steps * k, x.shape[1] // k, x.shape[2]), data)
    specs = {"l1": {"w": optim.ProjectionSpec(2, "right", "orthogonal"), "b": None},
             "l2": {"w": optim.ProjectionSpec(3, "dense", "gaussian"), "b": None}}
    tx = optim.low_rank_projection(opt, specs, refresh_every=10, accumulate_steps=k)
    got, state = helpers.run_projected(tx, params, micro)
    assert state.accumulator["l1"]["w"].shape == (helpers.D_IN, 2)  # right S of rank 2: (m, r)
    # The parameters move on every k-th call only.
    moves = [helpers.max_abs_diff(jax.tree.map(lambda x: x[t], got),
                                  jax.tree.map(lambda x: x[t - 1], got)) > 0
             for t in range(1, 2 * k + 1)]
    assert moves == [True, False, True, False]
    adapted = helpers.run_adapters(optax.MultiSteps(opt, k, accumulator_dtype=jnp.float64),
                                   params, micro, specs=specs, refresh_every=10,
                                   accumulate_steps=k)
    assert helpers.max_abs_diff(adapted, got) <= TOL
