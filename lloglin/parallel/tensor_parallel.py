"""Megatron-style tensor parallelism with explicit collectives (`jax.shard_map` + `psum`).

Inside one `shard_map` manual over the `tensor` axis (data and fsdp stay automatic), every
device of a tensor group holds the full residual stream and 1/tp of each layer: column-parallel
input projections (Q, K, V; SwiGLU gate and up) give it a slice of the heads / hidden units, its
row-parallel output projection (attention out, SwiGLU down) gives a *partial sum* of the module
output, and one `psum` over `tensor` completes it. Where that psum is consumed is the residual
mode's business (lloglin.models.ladder).

Heads: device r of tp holds query heads [r*H/tp, (r+1)*H/tp). Grouped-query attention: when the
kv-head count G is a multiple of tp the key/value projections are split too (device r holds
groups [r*G/tp, (r+1)*G/tp)); when tp is a multiple of G they are replicated and device r uses
group r // (tp/G), the one its query heads read. Other combinations raise ValueError, as do
head counts or MLP widths that tp does not divide.

How a mixer declares its tensor-parallel split (for authors of new mixers)
-------------------------------------------------------------------------
Give the mixer class two methods; nothing in lloglin.parallel needs to change:

  def tp_param_axes(self, tp: int) -> dict[str, tuple[str | None, ...]]:
    # logical axes of each parameter, keyed by its dotted path inside the mixer
    return {"in_proj.kernel": ("embed", "heads"), "A_log": ("heads",),
            "out_proj.kernel": ("heads", "embed")}

  def tp_call(self, x_BTD, *, tp: int, axis_name: str, segment_ids_BT=None,
              positions_BT=None):
    # runs per device of the tensor axis inside shard_map (the batch axes stay automatic:
    # write ordinary batched code): every parameter named with a `heads`, `kv_heads` or
    # `mlp` axis holds only this device's 1/tp slice (contiguous blocks, in order), every
    # other parameter is whole; jax.lax.axis_index(axis_name) is this device's index. Return
    # this device's PARTIAL output [B, T, D]; the caller psums it over `axis_name` (or defers
    # the psum, in ladder mode). Raise ValueError when tp does not divide what must be split.

Logical names: `embed` (model dim D), `heads`, `kv_heads`, `mlp` (split over `tensor`), anything
else or None (whole). Parameters not listed are whole on every device. A mixer without these
methods still works under tensor parallelism: it runs replicated (all its parameters whole, the
same computation on every device of a tensor group, its output counted once), which is correct
but gains nothing. The built-in layers (lloglin.layers) declare theirs the same way; this module
knows no layer.

Which built-in layers split (each with one psum of its output per module):
  attention            query heads; kv heads split or replicated (above)
  mamba2,              heads (z, x, dt, A_log, D, norm scale, out_proj rows, lambda); B/C groups
  loglinear_mamba2     split or replicated as kv heads are. The fused in_proj [z|x|B|C|dt] and
                       its conv stay whole (contiguous blocks cannot split them): each device
                       multiplies by its columns only, so compute splits, their memory does not.
                       Norm groups spanning devices (tp > ngroups) all-gather one sum of squares
                       per token (lloglin.layers.norms.GatedRMSNorm.sharded)
  gdn, loglinear_gdn   value heads (v, gate, a/b projections, A_log, dt_bias, o_proj rows,
                       lambda); q/k heads split or replicated as kv heads are
  path, path_fox       as attention: query heads (q, forget gate); kv heads (k, v, w, beta)
  SwiGLU               hidden units
lloglin.layers.tp_split holds the shared pieces (which groups split, fused-parameter blocks).
A lax.scan whose fresh carry (zeros) meets a split mixer's per-device inputs must cast it first
(lloglin.ops.vma.vary_like): shard_map's check_vma refuses a carry that turns device-varying.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from lloglin.parallel import sharding
from lloglin.parallel.mesh import current_mesh

AXIS = "tensor"


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one layer class splits over the tensor axis: parameter axes and the per-device call."""
  param_axes: Callable[[nnx.Module, int], dict]
  call: Callable[..., jax.Array]


def plan_for(module) -> Plan | None:
  """The plan a module declares (`tp_param_axes` and `tp_call`), or None (run replicated)."""
  if callable(getattr(module, "tp_param_axes", None)) and callable(getattr(module, "tp_call",
                                                                           None)):
    return Plan(param_axes=lambda m, tp: m.tp_param_axes(tp),
                call=lambda m, x, **kw: m.tp_call(x, **kw))
  return None


def module_call(module, x, *, tp: int, axis_name: str | None = AXIS, **kwargs):
  """This device's share of `module(x, **kwargs)`: the exact output when tp == 1, otherwise a
  partial sum to be psummed over `axis_name` (inside shard_map)."""
  if tp == 1:
    return module(x, **kwargs)
  plan = plan_for(module)
  if plan is not None:
    return plan.call(module, x, tp=tp, axis_name=axis_name, **kwargs)
  y = module(x, **kwargs)  # replicated module: count its output once in the psum
  return jnp.where(jax.lax.axis_index(axis_name) == 0, y, jnp.zeros((), y.dtype))


# ----------------------------------------------------------------------------------------------
# Running modules inside one shard_map.


def shard_map_modules(modules: nnx.Module, body: Callable, *args, tp: int, mesh=None,
                      arg_specs=None, out_specs=None):
  """`body(local_modules, *args)` on every device of the `tensor` axis of `mesh` (default: the
  current mesh), the only manual axis: `data` and `fsdp` stay automatic (XLA keeps splitting
  the batch and gathering FSDP-split parameters as outside), so code that knows nothing of
  tensor parallelism (a mixer without a plan, a lax.scan with a fresh carry) runs unchanged.

  `modules`' parameters enter split over `tensor` by their logical axes. `args` are arrays,
  None, or pytrees; by default whole along `tensor`, else as `arg_specs` says (PartitionSpecs
  that name only `tensor`); the result is whole along `tensor` unless `out_specs` says
  otherwise. Gradients of parameters whole along `tensor` are summed over it by shard_map
  itself (check_vma=True), so the same function trains.
  """
  mesh = current_mesh() if mesh is None else mesh
  graphdef, state = nnx.split(modules)
  leaves_kp, treedef = jax.tree_util.tree_flatten_with_path(state)
  axes = sharding.param_logical_axes(modules, tp)
  leaves = [x for _, x in leaves_kp]
  param_specs = [sharding.spec_for(axes.get(sharding.keypath_keys(kp)), x.shape, mesh,
                                   only=(AXIS,), fsdp_fallback=False) for kp, x in leaves_kp]
  arg_specs = list(arg_specs or [None] * len(args))
  present = [i for i, a in enumerate(args) if a is not None]
  in_specs = [P() if arg_specs[i] is None else arg_specs[i] for i in present]

  def local(leaves, *present_args):
    full = list(args)
    for i, a in zip(present, present_args):
      full[i] = a
    return body(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), *full)

  return jax.shard_map(local, mesh=mesh, in_specs=(param_specs, *in_specs),
                       out_specs=P() if out_specs is None else out_specs,
                       axis_names=frozenset({AXIS}), check_vma=True)(
                           leaves, *[args[i] for i in present])
