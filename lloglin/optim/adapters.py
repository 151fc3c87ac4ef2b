"""The dual adapters: θ = θ0 + Sᵀφ with θ0 and S frozen and φ trained
(docs/literature.md#optimizer-duality).

For each projected parameter the adapter φ has the low-rank shape of S(G):
  left       W = W0 + P B       B (r, n)     one-sided LoRA with P frozen (LoRA-FA)
  right      W = W0 + A Qᵀ      A (m, r)
  two_sided  W = W0 + P C Qᵀ    C (r1, r2)   Kronecker core (LoRA-XS-like)
  dense      θ = θ0 + P φ       φ (r, 1)
Unprojected parameters are trained directly (the adapter tree holds the parameter itself), or
frozen with `train_unprojected=False` (the adapter tree holds None there). An adapter tree may
also hold `lloglin.optim.lora.LoRA` nodes (W = W0 + scale · a b, both factors trained; built by
`lora.init_lora`): `apply_adapters` and `merge_adapters` serve them too, with no projections
(`projections=None`).

Everything works on plain parameter pytrees, so an NNX model uses it through nnx.split/merge
(`nnx_adapter_loss`). Training φ with an optimizer `tx` follows the same trajectory as
`low_rank_projection(tx, specs)` on θ, provided both views refresh at the same steps with the
same policy (`refresh_adapters` is the adapter-side twin of the transform's refresh) and the
caveats of docs/literature.md#optimizer-duality hold: weight decay and clipping act on φ here but on
θ (or on the full gradient) in the projected view.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lloglin.optim import low_rank
from lloglin.optim import projections as proj_lib
from lloglin.optim.lora import LoRA, is_lora


def init_adapters(params: Any, projections: Any, *, train_unprojected: bool = True) -> Any:
  """φ0 = 0 with the low-rank shape where projected; the parameter itself (or None) elsewhere."""
  return jax.tree.map(
      lambda x, proj: jnp.zeros(proj_lib.low_rank_shape(x.shape, proj), x.dtype)
      if proj_lib.is_projected(proj) else (x if train_unprojected else None),
      params, projections)


def no_projections(params: Any) -> Any:
  """The projections tree of adapters without projections (LoRA): Projection() everywhere."""
  return jax.tree.map(lambda _: proj_lib.Projection(), params)


def apply_adapters(frozen_params: Any, adapter_params: Any, projections: Any = None) -> Any:
  """The effective parameters: θ0 + Sᵀφ where projected, W0 + scale · a b at a LoRA node, the
  adapter tree's entry (a directly trained parameter) or else the frozen one elsewhere."""
  if projections is None:
    projections = no_projections(frozen_params)

  def leaf(w0, a, proj):
    if is_lora(a):
      return (w0 + a.delta(w0.shape)).astype(w0.dtype)
    if proj_lib.is_projected(proj):
      return (w0 + proj_lib.back_project(a, proj, w0.shape)).astype(w0.dtype)
    return w0 if a is None else a

  return jax.tree.map(leaf, frozen_params, adapter_params, projections)


def merge_adapters(frozen_params: Any, adapter_params: Any,
                   projections: Any = None) -> tuple[Any, Any]:
  """Merge-and-reinit: θ0 <- θ0 + Sᵀφ, φ <- 0 (for LoRA: W0 <- W0 + ΔW, b <- 0, a kept).
  Returns (frozen_params, adapter_params)."""
  if projections is None:
    projections = no_projections(frozen_params)
  merged = apply_adapters(frozen_params, adapter_params, projections)

  def reinit(a, proj):
    if is_lora(a):
      return LoRA(a.a, jnp.zeros_like(a.b), a.scale)
    return jnp.zeros_like(a) if a is not None and proj_lib.is_projected(proj) else a

  adapters = jax.tree.map(reinit, adapter_params, projections,
                          is_leaf=lambda x: x is None or is_lora(x))
  return merged, adapters


def refresh_adapters(frozen_params: Any, adapter_params: Any, projections: Any, opt_state: Any,
                     *, tx: optax.GradientTransformation, specs: Any, grads: Any = None,
                     seed: int = 0, refresh_index: Any = 0, worker_index: int = 0,
                     reset_state: bool = False) -> tuple[Any, Any, Any, Any]:
  """Merge, draw new factors, and optionally reset the adapters' optimizer state.

  The adapter-side twin of a refresh in `low_rank_projection`: call it at the same steps
  (`low_rank.is_refresh_step(step, refresh_every)`, step > 0) with
  `refresh_index=low_rank.refresh_index(step, refresh_every)`.

  Args:
    grads: the full gradient at the current effective parameters (needed for svd sources; the
      gradient wrt `frozen_params` of loss(apply_adapters(...)) is that gradient).
    reset_state: the "reset" refresh policy ("keep" = False carries the state over).

  Returns:
    (frozen_params, adapter_params, projections, opt_state).
  """
  if grads is None and any(s.source == "svd"
                          for s in jax.tree.leaves(proj_lib.resolve_specs(specs, frozen_params))):
    raise ValueError("grads=None, but source='svd' takes the new factors from the gradient: "
                     "pass the full gradient at the current effective parameters")
  frozen, adapters = merge_adapters(frozen_params, adapter_params, projections)
  source = frozen if grads is None else grads
  new_projections = proj_lib.make_projections(specs, source, seed=seed,
                                              refresh_index=refresh_index,
                                              worker_index=worker_index)
  if reset_state:
    opt_state = low_rank.reset_projected_state(tx, opt_state, adapters, new_projections)
  return frozen, adapters, new_projections, opt_state


def loss_on_adapters(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
  """`loss_fn(params, *args)` as `loss(adapter_params, frozen_params, projections, *args)`."""

  def loss(adapter_params, frozen_params, projections, *args, **kwargs):
    return loss_fn(apply_adapters(frozen_params, adapter_params, projections), *args, **kwargs)

  return loss


def nnx_adapter_loss(model: nnx.Module, loss_fn: Callable[..., Any]) -> tuple[Callable, Any]:
  """`loss_fn(model, *args)` as a function of adapter parameters, for an NNX model.

  Returns (loss, params): `params` is the model's nnx.Param state (the frozen θ0, to pass to
  `make_projections`, `init_adapters` and `apply_adapters`), and
  `loss(adapter_params, frozen_params, projections, *args, **kwargs)` merges the effective
  parameters into a new model (nnx.merge, fine inside jax.jit) and calls `loss_fn` on it;
  differentiate it wrt its first argument. Which parameters carry adapters is decided by the
  projections (built from a mask / ProjectionSpec tree over `params`). Other model state (batch
  statistics, RNG counters) is read from `model` as it is now and not written back; pass keys
  for stochastic layers through `args`.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  merged_loss = lambda p, *a, **k: loss_fn(nnx.merge(graphdef, p, rest), *a, **k)
  return loss_on_adapters(merged_loss), params
