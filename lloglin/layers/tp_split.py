"""Pieces of the mixers' tensor-parallel plans (`tp_param_axes` / `tp_call`,
lloglin.parallel.tensor_parallel): shared groups, and blocks of fused parameters.

Shared groups: several heads read one group (grouped-query kv heads, Mamba-2's B/C groups, GDN's
q/k heads). Device r of tp holds heads [r*H/tp, (r+1)*H/tp). When tp divides the group count
G the groups are split the same way (device r holds groups [r*G/tp, (r+1)*G/tp), the ones its
heads read); when G divides tp they are replicated and device r reads group r // (tp/G) alone.

Fused parameters: a projection whose columns concatenate several parts (Mamba-2's in_proj
[z | x | B | C | dt], its short conv over [x | B | C]) cannot be split in contiguous blocks by
a PartitionSpec. Such a parameter stays whole on every device, and each device takes its
columns of every part (`local_blocks`) before the matmul: the compute is split, the weight's
memory is not; shard_map sums its gradient over the tensor axis.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def groups_split(mixer: str, heads: str, num_heads: int, groups: str, num_groups: int,
                 tp: int) -> bool:
  """True when tp splits the `num_groups` groups, False when they are replicated (tp % G == 0).

  `heads` / `groups` name the counts in the error messages (e.g. 'model.num_heads'). Raises
  ValueError when tp does not divide the heads or neither of tp and G divides the other.
  """
  if num_heads % tp:
    raise ValueError(f"{mixer}: tensor parallelism tp={tp} must divide {heads}={num_heads}")
  if num_groups % tp == 0:
    return True
  if tp % num_groups == 0:
    return False
  raise ValueError(f"{mixer}: tensor parallelism tp={tp} and {groups}={num_groups}: one must "
                   f"divide the other (groups are split when tp divides them, replicated when "
                   f"they divide tp)")


def group_range(num_groups: int, tp: int, axis_name: str, split: bool):
  """(first group, group count) of this device (a traced first index, a static count)."""
  r = jax.lax.axis_index(axis_name)
  if split:
    return r * (num_groups // tp), num_groups // tp
  return r // (tp // num_groups), 1


def local_group(a, axis: int, num_groups: int, tp: int, axis_name: str):
  """The group axis `axis` of a replicated array `a` cut to the group this device's heads read
  (groups replicated: tp % num_groups == 0)."""
  first, count = group_range(num_groups, tp, axis_name, split=False)
  return jax.lax.dynamic_slice_in_dim(a, first, count, axis=axis)


def local_blocks(a, axis: int, blocks: Sequence[tuple[int, jax.Array | int, int]]):
  """Concatenation along `axis` of a[offset + start : offset + start + size] for each
  (offset, start, size) of `blocks` (start may be traced, e.g. from axis_index)."""
  return jnp.concatenate([jax.lax.dynamic_slice_in_dim(a, offset + start, size, axis=axis)
                          for offset, start, size in blocks], axis=axis)
