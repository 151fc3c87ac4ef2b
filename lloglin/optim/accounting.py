"""Byte accounting of optimizer states, by group (printed at the start of training)."""

import math
from typing import Any

import jax
import numpy as np

from lloglin.optim import low_rank
from lloglin.optim import projections as proj_lib

GROUPS = ("params", "state_full", "state_low_rank", "projections", "accumulators", "other",
          "state_total")


def _nbytes(x: Any) -> int:
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    return 0
  return math.prod(x.shape) * np.dtype(x.dtype).itemsize


def optimizer_state_bytes(opt_state: Any, params: Any, *, projections: Any = None) -> dict:
  """Bytes of `opt_state` by group; works on concrete or abstract (jax.eval_shape) states.

  Groups: "state_full" (per-parameter entries of unprojected parameters, e.g. their Adam
  moments), "state_low_rank" (per-parameter entries of projected parameters, at the low-rank
  shape), "projections" (the factors P, Q), "accumulators" (microbatch sums:
  LowRankState.accumulator, optax.MultiSteps' acc_grads), "other" (step counts and the rest),
  and "state_total"; "params" is the size of `params`, for reference.

  State entries are matched to parameters by the suffix of their tree path. Inside a
  LowRankState the projected parameters are known; elsewhere pass `projections` (a
  params-shaped tree of Projection) to mark them, e.g. for the adapter view, with the adapter
  parameters as `params`.
  """
  param_items = jax.tree_util.tree_flatten_with_path(params)[0]
  shapes = {path: tuple(x.shape) for path, x in param_items}
  given = _projected_paths(projections) if projections is not None else set()
  out = dict.fromkeys(GROUPS, 0)
  out["params"] = sum(_nbytes(x) for _, x in param_items)

  def classify(path, leaf, projected):
    for i in range(len(path) + 1):
      suffix = path[i:]
      if suffix in shapes and (suffix or tuple(leaf.shape) == shapes[suffix]):
        return "state_low_rank" if suffix in projected else "state_full"
    return "other"

  for path, node in jax.tree_util.tree_flatten_with_path(
      opt_state, is_leaf=lambda x: isinstance(x, low_rank.LowRankState))[0]:
    if isinstance(node, low_rank.LowRankState):
      projected = given | _projected_paths(node.projections)
      for sub_path, leaf in jax.tree_util.tree_flatten_with_path(node.inner_state)[0]:
        out[classify(sub_path, leaf, projected)] += _nbytes(leaf)
      out["projections"] += sum(_nbytes(x) for x in jax.tree.leaves(node.projections))
      out["accumulators"] += sum(_nbytes(x) for x in jax.tree.leaves(node.accumulator))
      out["other"] += _nbytes(node.count) + _nbytes(node.micro_step)
    elif any(isinstance(k, jax.tree_util.GetAttrKey) and k.name == "acc_grads" for k in path):
      out["accumulators"] += _nbytes(node)
    else:
      out[classify(path, node, given)] += _nbytes(node)
  out["state_total"] = sum(out[g] for g in GROUPS if g not in ("params", "state_total"))
  return out


def _projected_paths(projections: Any) -> set:
  items = jax.tree_util.tree_flatten_with_path(projections, is_leaf=proj_lib.is_projection)[0]
  return {path for path, proj in items if proj_lib.is_projected(proj)}


def format_state_bytes(groups: dict) -> str:
  """One line per group, in MiB, with the state's size relative to the parameters."""
  lines = [f"{g:>15s}: {groups[g] / 2**20:10.3f} MiB" for g in GROUPS]
  if groups["params"]:
    lines.append(f"{'state/params':>15s}: {groups['state_total'] / groups['params']:10.3f}")
  return "\n".join(lines)
