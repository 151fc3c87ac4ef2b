"""Transformed-gradient training as an optax transform: project -> inner transform -> back-project.

`low_rank_projection(inner, specs)` feeds `inner` the tree S(g) (low-rank leaves where a
parameter is projected, the full gradient elsewhere), keeps `inner`'s state in that space and
returns Sᵀ(inner's update). With a fixed S this is exactly adapter training of
θ = θ0 + Sᵀφ (docs/literature.md#optimizer-duality), which `lloglin.optim.adapters` implements; the
tests check the two trajectories agree to 1e-12 in float64.

Refresh: every `refresh_every` steps (and at step 0) new factors are made (SVD of that step's
gradient, or a fresh random draw). `refresh_policy="keep"` carries `inner`'s state over
untransported, as GaLore does; "reset" re-initialises the state entries of the projected
parameters (shared entries such as Adam's step count are kept: they are not per parameter in
optax). `reset_projected_state` does the same for the adapter view.

Microbatches: with `accumulate_steps=k`, `update` is called once per microbatch; S(g) is summed
in the low-rank space and `inner` runs on the mean every k-th call, which returns zeros
otherwise (like optax.MultiSteps). A refresh step takes its SVD from its first microbatch.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lloglin.optim import projections as proj_lib

REFRESH_POLICIES = ("keep", "reset")


class LowRankState(NamedTuple):
  count: jax.Array  # int32 []: optimizer steps taken (inner updates)
  micro_step: jax.Array  # int32 []: microbatches summed towards the next step
  projections: Any  # params-shaped tree of Projection
  inner_state: optax.OptState  # state of `inner`, on the low-rank tree
  accumulator: Any  # params-shaped tree of low-rank sums; () when accumulate_steps == 1


def is_refresh_step(step, refresh_every: int):
  """Step 0 always; then every `refresh_every` steps (never again when refresh_every == 0)."""
  return step == 0 if refresh_every == 0 else step % refresh_every == 0


def refresh_index(step, refresh_every: int):
  """Which projection period `step` falls in (folded into the random seeds)."""
  return 0 * step if refresh_every == 0 else step // refresh_every


def reset_projected_state(tx: optax.GradientTransformation, state: optax.OptState, like: Any,
                          projections: Any) -> optax.OptState:
  """`state` with the entries of projected parameters replaced by those of `tx.init(like)`.

  `like` is a tree with the shapes `tx` was initialised with (the low-rank tree, or the adapter
  parameters). Entries that are not per parameter (step counts, schedules) are kept. This is the
  "reset" refresh policy, shared by both views so that they stay dual.
  """
  # None leaves (frozen parameters in the adapter view) stay None so the structures match.
  flags = jax.tree.map(lambda x, proj: None if x is None else proj_lib.is_projected(proj),
                       like, projections, is_leaf=lambda x: x is None)
  markers = optax.tree_map_params(tx, lambda _, flag: flag, state, flags,
                                  transform_non_params=lambda v: jax.tree.map(lambda _: False, v))
  fresh = tx.init(like)
  return jax.tree.map(lambda m, old, new: new if m else old, markers, state, fresh)


def low_rank_projection(inner: optax.GradientTransformation, specs: Any, *,
                        refresh_every: int = 0, refresh_policy: str = "keep", seed: int = 0,
                        worker_index: int = 0,
                        accumulate_steps: int = 1) -> optax.GradientTransformation:
  """Runs `inner` on S(g) and returns Sᵀ(update).

  Args:
    inner: any optax transform that does not read `params` (it receives None: the adapter
      parameters φ are not tracked here), e.g. scale_by_adam, sgd, lion.
    specs: a params-shaped tree of ProjectionSpec | None, or a callable params -> such a tree
      (use the callable under optax.partition / optax.masked). None leaves pass through `inner`
      at full size.
    refresh_every: steps between refreshes of S (0: S is made once, at step 0).
    refresh_policy: "keep" or "reset" (see the module docstring).
    seed, worker_index: seed the random factors (per parameter path; see projection_key).
    accumulate_steps: microbatches per optimizer step (see the module docstring).
  """
  if refresh_policy not in REFRESH_POLICIES:
    raise ValueError(f"refresh_policy={refresh_policy!r} is unknown; expected one of "
                     f"{REFRESH_POLICIES}")
  if not isinstance(refresh_every, int) or refresh_every < 0:
    raise ValueError(f"refresh_every={refresh_every!r}: expected an int >= 0 (0 = never)")
  if not isinstance(accumulate_steps, int) or accumulate_steps < 1:
    raise ValueError(f"accumulate_steps={accumulate_steps!r}: expected an int >= 1")

  def init_fn(params):
    if not jax.tree.leaves(params):
      # A tree without arrays, such as the placeholder optax.tree_map_params initialises with:
      # mirror it, so that tree_map_params finds the per-parameter entries of this state.
      return LowRankState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), params,
                          inner.init(params), () if accumulate_steps == 1 else params)
    projections = proj_lib.make_projections(specs, params, zeros=True)
    like = proj_lib.low_rank_zeros(params, projections)
    accumulator = () if accumulate_steps == 1 else jax.tree.map(_zeros_acc, like)
    return LowRankState(count=jnp.zeros([], jnp.int32), micro_step=jnp.zeros([], jnp.int32),
                        projections=projections, inner_state=inner.init(like),
                        accumulator=accumulator)

  def refresh(updates, state):
    projections = proj_lib.make_projections(
        specs, updates, seed=seed, refresh_index=refresh_index(state.count, refresh_every),
        worker_index=worker_index)
    projections = jax.tree.map(lambda new, old: new.astype(old.dtype), projections,
                               state.projections)
    inner_state = state.inner_state
    if refresh_policy == "reset":
      like = proj_lib.low_rank_zeros(updates, projections)
      inner_state = jax.lax.cond(
          state.count > 0, lambda: reset_projected_state(inner, inner_state, like, projections),
          lambda: inner_state)
    return projections, inner_state

  def step(low, updates, projections, inner_state):
    low_updates, inner_state = inner.update(low, inner_state, None)
    return proj_lib.back_project_tree(low_updates, projections, updates), inner_state

  def update_fn(updates, state, params=None):
    del params
    needs_refresh = (state.micro_step == 0) & is_refresh_step(state.count, refresh_every)
    projections, inner_state = jax.lax.cond(needs_refresh, lambda: refresh(updates, state),
                                            lambda: (state.projections, state.inner_state))
    low = proj_lib.project_tree(updates, projections)
    if accumulate_steps == 1:
      new_updates, inner_state = step(low, updates, projections, inner_state)
      return new_updates, LowRankState(optax.safe_int32_increment(state.count),
                                       state.micro_step, projections, inner_state, ())

    accumulator = jax.tree.map(lambda a, x: a + x.astype(a.dtype), state.accumulator, low)
    micro_step = state.micro_step + 1

    def emit():
      mean = jax.tree.map(lambda a, x: (a / accumulate_steps).astype(x.dtype), accumulator, low)
      new_updates, new_inner = step(mean, updates, projections, inner_state)
      return (new_updates, new_inner, jax.tree.map(jnp.zeros_like, accumulator),
              jnp.zeros_like(micro_step), optax.safe_int32_increment(state.count))

    def hold():
      return (jax.tree.map(jnp.zeros_like, updates), inner_state, accumulator, micro_step,
              state.count)

    new_updates, inner_state, accumulator, micro_step, count = jax.lax.cond(
        micro_step == accumulate_steps, emit, hold)
    return new_updates, LowRankState(count, micro_step, projections, inner_state, accumulator)

  return optax.GradientTransformation(init_fn, update_fn)


def _zeros_acc(x):
  return jnp.zeros(x.shape, jnp.promote_types(x.dtype, jnp.float32))
