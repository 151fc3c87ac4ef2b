"""LoRA (Hu et al. 2021, arXiv 2106.09685): W = W0 + (alpha / r) B A with both factors trained.

On the adapter machinery of lloglin.optim.adapters: the adapter tree has the parameters'
structure, with a `LoRA` node where a parameter is adapted and None elsewhere (frozen), so the
base W0 stays frozen and only the factors get optimizer state (`tx.init(adapters)`);
`apply_adapters` gives the effective parameters and `merge_adapters` folds an adapter into W0.

Layout: a parameter of shape `shape` is viewed as an (m, n) matrix (m = prod(shape[:split]),
the input side of an nnx.Linear kernel, which computes x @ W). In that layout the update is
    ΔW = scale · a b,   a (m, r),   b (r, n),   scale = alpha / r,
i.e. the paper's B A for a (out, in) weight, with a = Aᵀ drawn as PEFT draws A (uniform in
±1/sqrt(m), Kaiming-uniform with a = sqrt(5)) and b = Bᵀ = 0, so that a fresh adapter leaves the
model unchanged.

Many adapters (one per task) share one base: `stack_adapters` stacks them on a leading axis, and
`jax.vmap(f, in_axes=(None, 0, ...))(frozen, stacked, ...)` trains or serves all of them in one
program while W0 is held once (inside the vmapped step XLA forms W0 + ΔW per adapter for the
adapted matrices only). `save_adapters` / `load_adapters` write and read an adapter tree (stacked
or not) with orbax, without the base.
"""

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import struct

from lloglin.optim import projections as proj_lib


@struct.dataclass
class LoRA:
  """The factors of one adapted parameter (a pytree node; `scale` is static)."""
  a: jax.Array  # (m, r), or (N, m, r) when stacked
  b: jax.Array  # (r, n), or (N, r, n)
  scale: float = struct.field(pytree_node=False)

  def delta(self, shape: tuple[int, ...]) -> jax.Array:
    """ΔW = scale · a b, reshaped to the parameter's shape."""
    return (self.scale * jnp.einsum("mr,rn->mn", self.a, self.b)).reshape(shape)


def is_lora(x: Any) -> bool:
  return isinstance(x, LoRA)


@dataclasses.dataclass(frozen=True)
class LoRASpec:
  """How one parameter is adapted: rank r, alpha (ΔW is scaled by alpha / r), and the number of
  leading axes that form the rows of the matrix view."""
  rank: int
  alpha: float
  split: int = 1

  def __post_init__(self):
    if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
      raise ValueError(f"rank={self.rank!r}: expected a positive int")
    if not self.alpha > 0:
      raise ValueError(f"alpha={self.alpha!r}: expected a positive number")
    if not isinstance(self.split, int) or self.split < 1:
      raise ValueError(f"split={self.split!r}: expected an int >= 1")

  @property
  def scale(self) -> float:
    return float(self.alpha) / self.rank


def lora_specs(params: Any, *, rank: int, alpha: float, include: str = "", exclude: str = "",
               split: int = 1) -> Any:
  """A LoRASpec for every matrix (ndim >= 2) whose path (`path_str`, e.g.
  'blocks/0/mixer/q_proj/kernel') matches `include` (re.search; "" = all) and not `exclude`;
  None elsewhere. No parameter matching is a ValueError listing the paths."""
  spec = LoRASpec(rank, alpha, split)
  specs = proj_lib.specs_by_rule(params, spec, include=include, exclude=exclude, min_ndim=2)
  if not any(s is not None for s in jax.tree.leaves(specs, is_leaf=lambda x: x is None)):
    paths = [proj_lib.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    raise ValueError(f"LoRA targets include={include!r}, exclude={exclude!r} select no matrix "
                     f"parameter; parameters: {paths[:12]}{' ...' if len(paths) > 12 else ''}")
  return specs


def init_lora(params: Any, specs: Any, *, seed: int = 0) -> Any:
  """The adapter tree: LoRA(a ~ U(±1/sqrt(m)), b = 0) where specs has a LoRASpec, None
  elsewhere. `a` is seeded per parameter path, so adding a target leaves the others' draws."""

  def leaf(path, x, spec):
    if spec is None:
      return None
    if x.ndim <= spec.split:
      raise ValueError(f"LoRA on {proj_lib.path_str(path)!r}: shape {x.shape} with "
                       f"split={spec.split} has no matrix view")
    m = math.prod(x.shape[:spec.split])
    n = x.size // m
    key = proj_lib.projection_key(seed, proj_lib.path_str(path), "lora_a")
    bound = 1.0 / m ** 0.5
    a = jax.random.uniform(key, (m, spec.rank), jnp.float32, -bound, bound).astype(x.dtype)
    return LoRA(a, jnp.zeros((spec.rank, n), x.dtype), spec.scale)

  return jax.tree_util.tree_map_with_path(leaf, params, specs,
                                          is_leaf=lambda s: s is None or isinstance(s, LoRASpec))


def stack_adapters(adapters: list) -> Any:
  """Adapter trees of the same structure stacked on a new leading axis (one per task)."""
  if not adapters:
    raise ValueError("adapters: expected a non-empty list of adapter trees")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *adapters)


def adapter_at(stacked: Any, index: int) -> Any:
  """Adapter `index` of a stacked tree."""
  return jax.tree.map(lambda x: x[index], stacked)


def save_adapters(directory: str, adapters: Any) -> str:
  """Writes the adapter tree (not the base) with orbax to `directory` (replacing it); returns
  the absolute path."""
  directory = os.path.abspath(directory)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory, adapters, force=True)
  return directory


def load_adapters(directory: str, like: Any) -> Any:
  """Restores an adapter tree saved by `save_adapters` into the structure of `like` (an adapter
  tree or its jax.eval_shape)."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no saved adapters at {directory!r}")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(directory), abstract)


def target_paths(adapters: Any) -> list[str]:
  """Paths of the adapted parameters."""
  items = jax.tree_util.tree_flatten_with_path(adapters, is_leaf=is_lora)[0]
  return [proj_lib.path_str(p) for p, x in items if is_lora(x)]
