"""The jitted train and eval steps, on a functional train state (NNX split into pytrees).

Every step takes the task's functions of (model, batch) (lloglin.training.tasks): `loss` ->
(scalar, {name: scalar}) for training, `eval_sums` -> {name: sum} for evaluation; they default
to the LM task's. The state is a dict of plain pytrees that orbax saves and `jax.jit` shards:
  {"step", "params", "rest", "opt_state", "nonfinite_step"}, plus, for adapter training
  (optim.name in lloglin.optim.ADAPTER_NAMES), "adapters" and "projections": then "params" is
  the frozen θ0 and the model runs with θ0 + Sᵀφ.
`nonfinite_step` is -1 until a step sees a non-finite loss or gradient; that step's update is
skipped and the loop stops with the step number.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lloglin import optim
from lloglin.training.losses import lm_eval_sums, lm_loss

RESERVED_METRICS = ("loss", "grad_norm")


def call_merged(fn: Callable, graphdef, params, rest, batch):
  """`fn(model, batch)` (a task's loss or eval sums) of the model that (graphdef, params, rest)
  describe."""
  return fn(nnx.merge(graphdef, params, rest), batch)


def effective_params(state):
  """The parameters the model runs with (θ0 + Sᵀφ under adapter training)."""
  if "adapters" in state:
    return optim.apply_adapters(state["params"], state["adapters"], state["projections"])
  return state["params"]


class Program(NamedTuple):
  """What the loop needs: the initial state, its jitted step, and how to describe it."""
  graphdef: Any
  state: dict
  train_step: Callable  # (state, batch) -> (state, metrics); jitted, donates the state
  schedule: optax.Schedule
  summary: str
  trained: str  # the state key the optimizer updates: "params" or "adapters"


def init_state(model: nnx.Module, tx: optax.GradientTransformation):
  """(graphdef, state) for training all of the model's parameters with `tx`."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
                    "opt_state": tx.init(params), "nonfinite_step": jnp.full((), -1, jnp.int32)}


def make_program(optim_cfg, model: nnx.Module, *, num_steps: int,
                 first_batch: Callable[[], dict] | None = None,
                 loss: Callable = lm_loss) -> Program:
  """Builds the optimizer named by `optim_cfg.name` and the train state and step for `loss`.

  Adapter methods with SVD projections take their first factors from the gradient on the
  batch that `first_batch()` returns (called only then).
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if optim_cfg.name not in optim.ADAPTER_NAMES:
    tx, info = optim.make_optimizer(optim_cfg, params, num_steps=num_steps)
    graphdef, state = init_state(model, tx)
    return Program(graphdef, state, make_train_step(graphdef, tx, loss), info.schedule,
                   info.summary, "params")
  setup = optim.make_adapter_setup(optim_cfg, params, num_steps=num_steps)
  grads = None
  if setup.needs_gradient:
    if first_batch is None:
      raise ValueError(f"optim.name={optim_cfg.name!r} with SVD projections needs a batch to "
                       "take the first projections from")
    batch = first_batch()
    grads = jax.grad(lambda p: call_merged(loss, graphdef, p, rest, batch)[0])(params)
  adapters, projections, opt_state = setup.init(params, grads)
  # Unprojected parameters are trained in place in the adapter tree: give them their own
  # buffers, so that donating the state never donates one array twice.
  adapters = jax.tree.map(jnp.copy, adapters)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
           "adapters": adapters, "projections": projections, "opt_state": opt_state,
           "nonfinite_step": jnp.full((), -1, jnp.int32)}
  return Program(graphdef, state, make_adapter_train_step(graphdef, setup, loss), setup.schedule,
                 setup.info.summary, "adapters")


def _finish_step(state, updated: dict, loss, grads, terms: dict):
  """The new state, unchanged (and flagged) when the loss or gradient is not finite, and the
  step's metrics: the loss, the task's named terms, the gradient norm."""
  clash = sorted(set(terms) & set(RESERVED_METRICS))
  if clash:
    raise ValueError(f"the task's loss terms {clash} clash with the step's own metrics "
                     f"{RESERVED_METRICS}; rename them")
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = dict(state, **{k: jax.tree.map(lambda n, o: jnp.where(finite, n, o), v, state[k])
                             for k, v in updated.items()})
  new_state["step"] = state["step"] + 1
  new_state["nonfinite_step"] = jnp.where((state["nonfinite_step"] < 0) & ~finite,
                                          state["step"] + 1, state["nonfinite_step"])
  return new_state, {"loss": loss, **terms, "grad_norm": grad_norm}


def make_train_step(graphdef, tx: optax.GradientTransformation, loss: Callable = lm_loss):

  def train_step(state, batch):
    params, rest = state["params"], state["rest"]
    grad_fn = jax.value_and_grad(lambda p: call_merged(loss, graphdef, p, rest, batch),
                                 has_aux=True)
    (value, terms), grads = grad_fn(params)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    updated = {"params": optax.apply_updates(params, updates), "opt_state": opt_state}
    return _finish_step(state, updated, value, grads, terms)

  return jax.jit(train_step, donate_argnums=0)


def make_adapter_train_step(graphdef, setup: optim.AdapterSetup, loss: Callable = lm_loss):
  """Trains φ of θ = θ0 + Sᵀφ; every `refresh_every` steps merges φ into θ0 and draws new S."""

  def loss_at(frozen, adapters, projections, rest, batch):
    return call_merged(loss, graphdef, optim.apply_adapters(frozen, adapters, projections), rest,
                       batch)

  def refresh(state, batch):
    frozen, adapters, projections = state["params"], state["adapters"], state["projections"]
    grads = None
    if setup.needs_gradient:  # SVD factors come from the full gradient at θ0 + Sᵀφ
      grads = jax.grad(lambda f: loss_at(f, adapters, projections, state["rest"], batch)[0])(
          frozen)
    frozen, adapters, projections, opt_state = setup.refresh(
        frozen, adapters, projections, state["opt_state"], step=state["step"], grads=grads)
    return dict(state, params=frozen, adapters=adapters, projections=projections,
                opt_state=opt_state)

  def train_step(state, batch):
    if setup.refresh_every:
      due = (state["step"] > 0) & optim.is_refresh_step(state["step"], setup.refresh_every)
      state = jax.lax.cond(due, refresh, lambda s, b: s, state, batch)
    frozen, rest, projections = state["params"], state["rest"], state["projections"]
    grad_fn = jax.value_and_grad(lambda a: loss_at(frozen, a, projections, rest, batch),
                                 has_aux=True)
    (value, terms), grads = grad_fn(state["adapters"])
    updates, opt_state = setup.tx.update(grads, state["opt_state"], state["adapters"])
    updated = {"adapters": optax.apply_updates(state["adapters"], updates),
               "opt_state": opt_state}
    return _finish_step(state, updated, value, grads, terms)

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef, eval_sums: Callable = lm_eval_sums):
  """The jitted (params, rest, batch) -> the task's sums over one batch (its `eval_sums`)."""

  def eval_step(params, rest, batch):
    return call_merged(eval_sums, graphdef, params, rest, batch)

  return jax.jit(eval_step)
