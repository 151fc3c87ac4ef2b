"""Optimizers by name from the `optim` section of a config.

    tx, info = make_optimizer(cfg.optim, params, num_steps=cfg.train.num_steps)

optim.name: "adamw" (full AdamW), "galore" (SVD projections), "random_sketch" (Gaussian or
orthogonal projections), "kronecker" (two-sided Pᵀ G Q). All share the AdamW hyperparameters:
Adam runs in the low-rank space, then decoupled weight decay on θ and the warmup + cosine
learning rate in the full space (as GaLore, and optax.contrib.galore). Clipping acts on the full
gradient. The adapter duals ("onesided_lora", "kronecker_lora") train φ instead of θ, and "lora"
trains standard LoRA factors (W = W0 + (lora_alpha / rank) B A, lloglin.optim.lora); the trainer
gets them from `make_adapter_setup` (see AdapterSetup).

Config fields read (attribute access, so an ml_collections ConfigDict or any namespace works):
  common, required: learning_rate, warmup_steps, min_lr_ratio, b1, b2, eps, weight_decay,
    grad_clip_norm (0 = no clipping)
  optional (defaults in DEFAULTS): rank, refresh_every (0 = never), refresh_policy
    ("keep" | "reset"), projection ("svd" | "gaussian" | "orthogonal"; "" = the name's default),
    side ("left" | "right" | "auto"), mask_regex / mask_exclude_regex (which parameters are
    projected: re.search on paths like 'blocks/0/mlp/up/kernel', among those with ndim >= 2;
    the first axis gives the rows of the matrix view), accumulate_steps (microbatches per
    step), projection_seed, per_host_projections (fold jax.process_index() into the random
    seeds), decay_matrices_only (weight decay on ndim >= 2 only; the default False decays every
    parameter, as optax.adamw does), no_decay_regex (parameters whose paths match get no weight
    decay, e.g. Mamba-2's A_log / dt_bias / D, which its authors exclude; "" = none),
    lora_alpha (LoRA's alpha; the update is scaled by lora_alpha / rank; "lora" only).
"""

import re
from typing import Any, NamedTuple

import jax
import optax

from lloglin.optim import adapters as adapters_lib
from lloglin.optim import lora as lora_lib
from lloglin.optim import low_rank
from lloglin.optim import projections as proj_lib

NAMES = ("adamw", "galore", "random_sketch", "kronecker")
ADAPTER_NAMES = ("onesided_lora", "kronecker_lora", "lora")
COMMON_FIELDS = ("learning_rate", "warmup_steps", "min_lr_ratio", "b1", "b2", "eps",
                 "weight_decay", "grad_clip_norm")
# The default mask: the Linear kernels of mixers and MLPs (not the embedding, the untied head or
# the short convolutions).
DEFAULTS = dict(rank=128, refresh_every=200, refresh_policy="keep", projection="", side="auto",
                mask_regex=r"kernel$", mask_exclude_regex=r"(^|/)(embed|head|lm_head)(/|$)|conv/",
                accumulate_steps=1, projection_seed=0, per_host_projections=False,
                decay_matrices_only=False, no_decay_regex="", lora_alpha=16.0)
# Which projections each name allows; the first is the default.
_SOURCES = {"galore": ("svd",), "random_sketch": ("gaussian", "orthogonal"),
            "kronecker": proj_lib.SOURCES, "onesided_lora": proj_lib.SOURCES,
            "kronecker_lora": proj_lib.SOURCES}


class OptimConfig(NamedTuple):
  name: str
  learning_rate: float
  warmup_steps: int
  min_lr_ratio: float
  b1: float
  b2: float
  eps: float
  weight_decay: float
  grad_clip_norm: float
  rank: int
  refresh_every: int
  refresh_policy: str
  projection: str
  side: str
  mask_regex: str
  mask_exclude_regex: str
  accumulate_steps: int
  projection_seed: int
  per_host_projections: bool
  decay_matrices_only: bool
  no_decay_regex: str
  lora_alpha: float


class OptimizerInfo(NamedTuple):
  name: str
  schedule: optax.Schedule  # learning rate by optimizer step
  specs: Any  # params-shaped tree of ProjectionSpec | None (None for adamw)
  projected: tuple[str, ...]  # paths of the projected parameters
  accumulate_steps: int  # microbatches per optimizer step (update is called once per microbatch)
  summary: str  # one line to print at the start of training


class AdapterSetup(NamedTuple):
  """What the trainer needs for adapter training (θ = θ0 + Sᵀφ, φ trained by `tx`).

  Loop (θ0 = the model's params, frozen between refreshes):
      grads0 = full gradient at params if setup.needs_gradient else None
      adapters, projections, opt_state = setup.init(params, grads0)
      frozen = params
      for step in range(num_steps):
        if setup.should_refresh(step):
          grads = (the gradient wrt frozen of loss(apply_adapters(frozen, adapters, projections))
                   if setup.needs_gradient else None)
          frozen, adapters, projections, opt_state = setup.refresh(
              frozen, adapters, projections, opt_state, step=step, grads=grads)
        g = grad of loss(apply_adapters(frozen, adapters, projections)) wrt adapters
        updates, opt_state = setup.tx.update(g, opt_state, adapters)
        adapters = optax.apply_updates(adapters, updates)
  (`optim.loss_on_adapters(loss)` gives that loss as a function of (adapters, frozen,
  projections, ...).) `step` counts optimizer steps and may be traced, so one jitted refresh
  serves every refresh. With accumulate_steps > 1, `tx` is an optax.MultiSteps that averages
  the adapter gradients (already low-rank) over that many calls; refresh between optimizer
  steps.
  """
  tx: optax.GradientTransformation  # over the adapter tree
  specs: Any
  schedule: optax.Schedule
  refresh_every: int
  refresh_policy: str
  seed: int
  worker_index: int
  needs_gradient: bool  # svd projections: init/refresh need the full gradient
  info: OptimizerInfo

  def init(self, params: Any, grads: Any = None) -> tuple[Any, Any, Any]:
    """(adapter_params, projections, opt_state) at step 0."""
    _check_grads(self, grads)
    if self.info.name == "lora":  # LoRA factors, no projections
      adapters = lora_lib.init_lora(params, self.specs, seed=self.seed)
      return adapters, adapters_lib.no_projections(params), self.tx.init(adapters)
    projections = proj_lib.make_projections(self.specs, params if grads is None else grads,
                                            seed=self.seed, worker_index=self.worker_index)
    adapters = adapters_lib.init_adapters(params, projections)
    return adapters, projections, self.tx.init(adapters)

  def should_refresh(self, step: int) -> bool:
    return step > 0 and bool(low_rank.is_refresh_step(step, self.refresh_every))

  def refresh(self, frozen_params, adapter_params, projections, opt_state, *, step: int,
              grads: Any = None) -> tuple[Any, Any, Any, Any]:
    """Merge φ into θ0, new projections, and the refresh policy on `opt_state`."""
    _check_grads(self, grads)
    return adapters_lib.refresh_adapters(
        frozen_params, adapter_params, projections, opt_state, tx=self.tx, specs=self.specs,
        grads=grads, seed=self.seed,
        refresh_index=low_rank.refresh_index(step, self.refresh_every),
        worker_index=self.worker_index, reset_state=self.refresh_policy == "reset")


def _check_grads(setup: AdapterSetup, grads: Any) -> None:
  if setup.needs_gradient and grads is None:
    raise ValueError("projection='svd' takes its factors from the gradient: pass grads (the "
                     "full gradient at the current effective parameters)")


def read_config(optim_cfg: Any) -> OptimConfig:
  """The optimizer fields of a config (ConfigDict or any object with attributes)."""
  missing = [f for f in ("name",) + COMMON_FIELDS if not hasattr(optim_cfg, f)]
  if missing:
    raise ValueError(f"optim config lacks the fields {missing}; the common fields are "
                     f"{('name',) + COMMON_FIELDS}")
  values = {f: getattr(optim_cfg, f) for f in ("name",) + COMMON_FIELDS}
  values.update({f: getattr(optim_cfg, f, d) for f, d in DEFAULTS.items()})
  return OptimConfig(**values)


def make_schedule(cfg: OptimConfig, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then cosine to learning_rate * min_lr_ratio at
  num_steps (warmup shortened to num_steps - 1 for short runs)."""
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps={num_steps!r}: expected a positive int")
  if cfg.warmup_steps < 0:
    raise ValueError(f"optim.warmup_steps={cfg.warmup_steps!r}: expected >= 0")
  if not 0.0 <= cfg.min_lr_ratio <= 1.0:
    raise ValueError(f"optim.min_lr_ratio={cfg.min_lr_ratio!r}: expected a value in [0, 1]")
  warmup = min(cfg.warmup_steps, num_steps - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=cfg.learning_rate * cfg.min_lr_ratio)


def decay_mask(cfg: OptimConfig):
  """optax's weight-decay mask: None (decay all) or a function of the parameter tree."""
  if not cfg.decay_matrices_only and not cfg.no_decay_regex:
    return None
  excluded = re.compile(cfg.no_decay_regex) if cfg.no_decay_regex else None

  def mask(params):
    def decayed(path, x):
      if cfg.decay_matrices_only and x.ndim < 2:
        return False
      return excluded is None or not excluded.search(proj_lib.path_str(path))
    return jax.tree.map_with_path(decayed, params)
  return mask


def make_specs(cfg: OptimConfig, params: Any) -> Any:
  """The ProjectionSpec tree for a low-rank or adapter name (a LoRASpec tree for "lora")."""
  if cfg.name == "lora":
    return lora_lib.lora_specs(params, rank=cfg.rank, alpha=cfg.lora_alpha,
                               include=cfg.mask_regex, exclude=cfg.mask_exclude_regex)
  two_sided = cfg.name in ("kronecker", "kronecker_lora")
  sides = ("auto", "two_sided") if two_sided else ("left", "right", "auto")
  if cfg.side not in sides:
    raise ValueError(f"optim.side={cfg.side!r} is invalid for optim.name={cfg.name!r}; "
                     f"expected one of {sides}")
  allowed = _SOURCES[cfg.name]
  source = cfg.projection or allowed[0]
  if source not in allowed:
    raise ValueError(f"optim.projection={cfg.projection!r} is invalid for "
                     f"optim.name={cfg.name!r}; expected one of {allowed} (or '' for "
                     f"{allowed[0]!r})")
  spec = proj_lib.ProjectionSpec(rank=cfg.rank, side="two_sided" if two_sided else cfg.side,
                                 source=source)
  specs = proj_lib.specs_by_rule(params, spec, include=cfg.mask_regex,
                                 exclude=cfg.mask_exclude_regex, min_ndim=2)
  selected = _selected(params, specs)
  if not selected:
    paths = [proj_lib.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    raise ValueError(f"optim.mask_regex={cfg.mask_regex!r} with optim.mask_exclude_regex="
                     f"{cfg.mask_exclude_regex!r} selects no parameter with ndim >= 2; "
                     f"parameters: {paths[:12]}{' ...' if len(paths) > 12 else ''}")
  too_small = []
  for path, shape in selected:
    try:
      proj_lib.resolve(spec, shape, path)
    except ValueError as e:
      too_small.append(f"{path} {tuple(shape)}: {str(e).split('; ')[-1]}")
  if too_small:
    raise ValueError(f"optim.rank={cfg.rank!r} does not fit {len(too_small)} of the selected "
                     f"parameters ({'; '.join(too_small[:8])}{' ...' if len(too_small) > 8 else ''}"
                     "); lower optim.rank or leave them out with optim.mask_exclude_regex")
  return specs


def _selected(params: Any, specs: Any) -> list[tuple[str, tuple[int, ...]]]:
  """(path, shape) of the parameters with a spec."""
  items = jax.tree_util.tree_flatten_with_path(params)[0]
  spec_leaves = jax.tree.structure(params).flatten_up_to(specs)
  return [(proj_lib.path_str(path), tuple(x.shape))
          for (path, x), spec in zip(items, spec_leaves, strict=True) if spec is not None]


def _check_common(cfg: OptimConfig) -> None:
  if cfg.refresh_policy not in low_rank.REFRESH_POLICIES:
    raise ValueError(f"optim.refresh_policy={cfg.refresh_policy!r} is unknown; expected one of "
                     f"{low_rank.REFRESH_POLICIES}")
  if not isinstance(cfg.refresh_every, int) or cfg.refresh_every < 0:
    raise ValueError(f"optim.refresh_every={cfg.refresh_every!r}: expected an int >= 0")
  if not isinstance(cfg.accumulate_steps, int) or cfg.accumulate_steps < 1:
    raise ValueError(f"optim.accumulate_steps={cfg.accumulate_steps!r}: expected an int >= 1")
  if cfg.grad_clip_norm < 0:
    raise ValueError(f"optim.grad_clip_norm={cfg.grad_clip_norm!r}: expected >= 0 (0 = none)")


def _clip(cfg: OptimConfig) -> list[optax.GradientTransformation]:
  return [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm > 0 else []


def _adamw(cfg: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  tx = optax.chain(*_clip(cfg), optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                            weight_decay=cfg.weight_decay,
                                            mask=decay_mask(cfg)))
  if cfg.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate_steps).gradient_transformation()
  return tx


def _summary(cfg: OptimConfig, projected: tuple[str, ...], kind: str) -> str:
  head = (f"{cfg.name}: lr {cfg.learning_rate:g} (warmup {cfg.warmup_steps}, cosine to x"
          f"{cfg.min_lr_ratio:g}), b1 {cfg.b1:g}, b2 {cfg.b2:g}, eps {cfg.eps:g}, weight decay "
          f"{cfg.weight_decay:g}, clip {cfg.grad_clip_norm:g}, accumulate "
          f"{cfg.accumulate_steps}")
  if cfg.name == "adamw":
    return head
  if cfg.name == "lora":
    return (f"{head}; LoRA rank {cfg.rank}, alpha {cfg.lora_alpha:g} on {len(projected)} "
            "parameters")
  source = cfg.projection or _SOURCES[cfg.name][0]
  return (f"{head}; {kind} rank {cfg.rank}, {source} projection, side {cfg.side}, on "
          f"{len(projected)} parameters, refresh every {cfg.refresh_every} "
          f"({cfg.refresh_policy})")


def make_optimizer(optim_cfg: Any, params: Any, *,
                   num_steps: int) -> tuple[optax.GradientTransformation, OptimizerInfo]:
  """(tx, info) for optim_cfg.name in NAMES; `params` gives shapes and paths.

  With accumulate_steps = k > 1, call tx.update once per microbatch: updates are zero except
  on every k-th call, which applies the mean. For the low-rank names the sum is kept in the
  low-rank space and clipping applies to each microbatch's gradient (for adamw,
  optax.MultiSteps clips the mean).
  """
  cfg = read_config(optim_cfg)
  if cfg.name in ADAPTER_NAMES:
    raise ValueError(f"optim.name={cfg.name!r} trains adapters, not the parameters: build it "
                     "with make_adapter_setup(optim_cfg, params, num_steps=...)")
  if cfg.name not in NAMES:
    raise ValueError(f"optim.name={cfg.name!r} is unknown; expected one of "
                     f"{NAMES + ADAPTER_NAMES}")
  _check_common(cfg)
  schedule = make_schedule(cfg, num_steps)
  if cfg.name == "adamw":
    return _adamw(cfg, schedule), OptimizerInfo(cfg.name, schedule, None, (),
                                                cfg.accumulate_steps, _summary(cfg, (), ""))

  specs = make_specs(cfg, params)
  k = cfg.accumulate_steps
  projection = low_rank.low_rank_projection(
      optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps), specs,
      refresh_every=cfg.refresh_every, refresh_policy=cfg.refresh_policy,
      seed=cfg.projection_seed,
      worker_index=jax.process_index() if cfg.per_host_projections else 0,
      accumulate_steps=k)
  post = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask(cfg)),
                     optax.scale_by_learning_rate(schedule))
  if k > 1:  # weight decay and the schedule advance once per optimizer step
    post = optax.transforms.conditionally_transform(post, lambda step: (step + 1) % k == 0)
  tx = optax.chain(*_clip(cfg), projection, post)
  projected = tuple(path for path, _ in _selected(params, specs))
  return tx, OptimizerInfo(cfg.name, schedule, specs, projected, k,
                           _summary(cfg, projected, "projected Adam"))


def make_adapter_setup(optim_cfg: Any, params: Any, *, num_steps: int) -> AdapterSetup:
  """AdapterSetup for optim_cfg.name in ADAPTER_NAMES: "onesided_lora" (W = W0 + P B, or
  A Qᵀ; side and projection as for galore / random_sketch), "kronecker_lora"
  (W = W0 + P C Qᵀ) or "lora" (W = W0 + (lora_alpha / rank) B A, both factors trained, never
  refreshed). The adapters' optimizer is AdamW on φ (weight decay pulls φ to 0, i.e. θ
  to θ0, and clipping sees ∇φ: the two caveats of the duality)."""
  cfg = read_config(optim_cfg)
  if cfg.name not in ADAPTER_NAMES:
    raise ValueError(f"optim.name={cfg.name!r} is not an adapter method; expected one of "
                     f"{ADAPTER_NAMES} (use make_optimizer for {NAMES})")
  _check_common(cfg)
  schedule = make_schedule(cfg, num_steps)
  specs = make_specs(cfg, params)
  projected = tuple(path for path, _ in _selected(params, specs))
  needs_gradient = cfg.name != "lora" and any(s.source == "svd" for s in jax.tree.leaves(specs))
  info = OptimizerInfo(cfg.name, schedule, specs, projected, cfg.accumulate_steps,
                       _summary(cfg, projected, "adapters"))
  return AdapterSetup(tx=_adamw(cfg, schedule), specs=specs, schedule=schedule,
                      refresh_every=0 if cfg.name == "lora" else cfg.refresh_every,
                      refresh_policy=cfg.refresh_policy, seed=cfg.projection_seed,
                      worker_index=jax.process_index() if cfg.per_host_projections else 0,
                      needs_gradient=needs_gradient, info=info)

