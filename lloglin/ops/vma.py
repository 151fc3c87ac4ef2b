"""Scan carries inside shard_map (tensor parallelism, lloglin.parallel.tensor_parallel).

With shard_map's check_vma=True every value carries the set of manual mesh axes it varies over,
and lax.scan requires its carry to keep that set: a fresh carry (zeros, an identity) is
invariant, while a step that mixes in per-device inputs (a head-split mixer's q, k, v) makes it
varying, and the scan refuses. `vary_like` casts the initial carry to vary over every axis the
scanned inputs vary over; outside shard_map the sets are empty and it returns the carry as is.
"""

import jax


def _vma(x) -> frozenset:
  """The manual mesh axes x varies over (empty outside shard_map)."""
  manual = getattr(jax.typeof(x), "manual_axis_type", None)
  return frozenset() if manual is None else frozenset(manual.varying)


def vary_like(carry, *inputs):
  """`carry` (a pytree) cast to vary over the manual axes any leaf of `inputs` varies over."""
  axes = frozenset().union(*(_vma(x) for x in jax.tree.leaves(inputs)))

  def cast(c):
    missing = tuple(sorted(axes - _vma(c)))
    return jax.lax.pcast(c, missing, to="varying") if missing else c

  return jax.tree.map(cast, carry) if axes else carry
