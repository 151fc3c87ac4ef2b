"""Logical-axis sharding rules: how every parameter, optimizer slot and activation is split.

Parameters carry *logical* axis names (`embed`, `heads`, `kv_heads`, `mlp`, `vocab`, ...); the
rules below map each name to mesh axes. Changing the mesh shape alone (`c.mesh`) turns the same
train step into data-parallel, FSDP or tensor-parallel training.

Where a parameter's logical axes come from (first match wins), see `param_logical_axes`:
  1. the tensor-parallel plan of the module that owns it (its `tp_param_axes`, as the built-in
     Attention and SwiGLU layers and any mixer may declare: lloglin.parallel.tensor_parallel);
  2. `sharding` metadata on the nnx Variable (`nnx.with_partitioning(init, ('embed', 'heads'))`
     or `nnx.Param(..., sharding=(...))`);
  3. the decoder's own names (token embedding, untied head, norm scales);
  4. otherwise: replicated over `tensor`; with FSDP the largest dimension that the fsdp size
     divides is split over `fsdp` (so unknown mixers still save memory under FSDP).

A dimension whose size the mesh axes do not divide is left unsplit (never an error), so odd
vocabularies or head counts degrade to replication instead of failing.
"""

from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from lloglin.parallel.mesh import BATCH_AXES, axis_size

# logical axis -> mesh axes (tuple: split over several mesh axes, in order)
RULES: Mapping[str, tuple[str, ...]] = {
    "batch": BATCH_AXES,
    "embed": ("fsdp",),  # parameters only: FSDP splits the model dimension of every weight
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "act_embed": (),  # the model dimension of activations (the residual stream) stays whole
    "length": (),
    "norm": (),
}

# Parameters of the decoder itself (path suffix -> logical axes), used when rule 1/2 says nothing.
_DECODER_PARAMS = {
    ("embed", "embedding"): ("vocab", "embed"),
    ("head", "kernel"): ("embed", "vocab"),
    ("head", "bias"): ("vocab",),
}


def keypath_keys(keypath) -> tuple:
  """A jax keypath as plain keys, without the Variable's trailing `.value`."""
  out = []
  for k in keypath:
    if isinstance(k, jax.tree_util.DictKey):
      out.append(k.key)
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(k.idx)
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name not in ("value", "raw_value"):
        out.append(k.name)
    else:
      out.append(str(k))
  return tuple(out)


def spec_for(logical_axes, shape, mesh, *, rules: Mapping = RULES,
             only: tuple[str, ...] | None = None, fsdp_fallback: bool = True) -> P:
  """PartitionSpec of an array with `logical_axes` (None entries = unsplit) on `mesh`.

  `only` restricts the result to those mesh axes (e.g. ('tensor',) for shard_map in_specs).
  Mesh axes of size 1, mesh axes already used by an earlier dimension, and splits that do not
  divide the dimension are dropped. With `fsdp_fallback`, an array of rank >= 2 that no rule
  splits over `fsdp` is split over it on its largest divisible dimension.
  """
  if logical_axes is None:
    logical_axes = (None,) * len(shape)
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {logical_axes} do not match an array of shape {shape}")
  used, out = set(), []
  for name, dim in zip(logical_axes, shape):
    axes = []
    for a in rules.get(name, ()) if name is not None else ():
      n = axis_size(mesh, a)
      if n == 1 or a in used or (only is not None and a not in only):
        continue
      if dim % (n * int(np.prod([axis_size(mesh, b) for b in axes]))) == 0:
        axes.append(a)
    used.update(axes)
    out.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
  n_fsdp = axis_size(mesh, "fsdp")
  if (fsdp_fallback and n_fsdp > 1 and "fsdp" not in used and len(shape) >= 2
      and (only is None or "fsdp" in only)):
    for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
      if out[i] is None and shape[i] % n_fsdp == 0:
        out[i] = "fsdp"
        break
  while out and out[-1] is None:  # P("x", None) == P("x"): the form jit hands back
    out.pop()
  return P(*out)


def _variable_axes(variable) -> tuple | None:
  meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
  for key in ("sharding", "sharding_names", "out_sharding"):
    names = meta.get(key)
    if names is not None and not isinstance(names, (P, NamedSharding)):
      return tuple(names)
  return None


def param_logical_axes(model: nnx.Module, tp: int = 1) -> dict[tuple, tuple]:
  """Logical axes of every nnx Variable of `model`, keyed by its path (tuple of keys).

  `tp` is the tensor-parallel degree: some plans change with it (e.g. GQA key/value projections
  are replicated when the kv-head count is not a multiple of tp).
  """
  from lloglin.parallel import tensor_parallel  # it imports this module; import lazily
  axes: dict[tuple, tuple] = {}
  planned: set[tuple] = set()
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Module):
      plan = tensor_parallel.plan_for(node)
      if plan is None:
        continue
      for rel, names in plan.param_axes(node, tp).items():
        axes[tuple(path) + tuple(_split_rel(rel))] = tuple(names)
      planned.add(tuple(path))
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Variable):
      continue
    path = tuple(path)
    if path in axes:
      continue
    declared = _variable_axes(node)
    if declared is not None:
      axes[path] = declared
      continue
    for suffix, names in _DECODER_PARAMS.items():
      if path[-len(suffix):] == suffix:
        axes[path] = names
        break
    else:
      axes[path] = (None,) * len(node.get_value().shape)
  return axes


def _split_rel(rel) -> tuple:
  if isinstance(rel, tuple):
    return rel
  return tuple(int(k) if k.isdigit() else k for k in rel.split("."))


def tree_specs(tree, axes_by_path: Mapping[tuple, tuple], mesh, **kw):
  """PartitionSpecs for every array leaf of `tree` (params, optimizer state, a whole train state).

  A leaf is matched to the parameter whose path is the longest suffix of the leaf's path with
  the same shape (so Adam's mu/nu follow their parameter); anything else is replicated, except
  for the FSDP fallback of large arrays.
  """

  def leaf_spec(keypath, x):
    shape = tuple(x.shape)
    keys = keypath_keys(keypath)
    for start in range(len(keys)):
      names = axes_by_path.get(keys[start:])
      if names is not None and len(names) == len(shape):
        return spec_for(names, shape, mesh, **kw)
    return spec_for(None, shape, mesh, **kw)

  return jax.tree_util.tree_map_with_path(leaf_spec, tree)


def shard_state(state, model: nnx.Module, mesh):
  """Places a train state (or params) on `mesh` by the logical-axis rules."""
  axes = param_logical_axes(model, axis_size(mesh, "tensor"))
  specs = tree_specs(state, axes, mesh)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                           is_leaf=lambda s: isinstance(s, P))
  return jax.device_put(state, shardings)


def batch_axes(mesh, batch_size: int | None = None):
  """The mesh axes the batch dimension is split over (None when nothing splits it)."""
  axes = tuple(a for a in BATCH_AXES if axis_size(mesh, a) > 1)
  n = int(np.prod([axis_size(mesh, a) for a in axes])) if axes else 1
  if not axes or (batch_size is not None and batch_size % n):
    return None
  return axes if len(axes) > 1 else axes[0]


def constrain_batch(x, mesh=None):
  """Pins the leading (batch) axis of an activation to the batch mesh axes, rest unsplit.

  A no-op outside a mesh context (jax.set_mesh) or inside shard_map's manual region.
  """
  from lloglin.parallel.mesh import current_mesh
  mesh = current_mesh() if mesh is None else mesh
  if mesh is None or any(t == jax.sharding.AxisType.Manual for t in mesh.axis_types):
    return x
  spec = P(batch_axes(mesh, x.shape[0]), *([None] * (x.ndim - 1)))
  return jax.lax.with_sharding_constraint(x, spec)


def use_mesh(mesh, fn: Callable) -> Callable:
  """`fn` run under `jax.set_mesh(mesh)`, so that models see the mesh (tensor parallelism)."""

  def wrapped(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)

  wrapped.__wrapped__ = fn
  return wrapped
