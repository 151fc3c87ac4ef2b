"""Normalisation layers.

The norms are rematerialised (`jax.checkpoint`): their backward pass keeps only the inputs (in
their own dtype) and recomputes the float32 intermediates, which autodiff would otherwise keep at
two to four times the input's bytes per norm (benchmarks/memory_accounting.py lists them). XLA
fuses the recomputation into the backward's elementwise work.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


@functools.partial(jax.checkpoint, static_argnums=(2,))
def rms_norm(x, scale, eps: float):
  """RMSNorm in float32, cast back to the input dtype."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (x32 * scale.astype(jnp.float32)).astype(x.dtype)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x):
    return rms_norm(x, self.scale[...], self.eps)


class GatedRMSNorm(nnx.Module):
  """RMSNorm with a SiLU gate z, over groups of `group_size` channels of the last axis.

  norm_before_gate=False (Mamba-2's RMSNormGated): RMSNorm(x * silu(z));
  norm_before_gate=True (Gated DeltaNet, fla's FusedRMSNormGated): RMSNorm(x) * silu(z).
  The scale has `dim` entries; computed in float32, returned in x's dtype.
  """

  def __init__(self, dim: int, *, group_size: int | None = None, norm_before_gate: bool,
               eps: float = 1e-6, param_dtype=jnp.float32):
    group_size = dim if group_size is None else group_size
    if group_size < 1 or dim % group_size:
      raise ValueError(f"GatedRMSNorm: group_size={group_size} must divide dim={dim}")
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.group_size = group_size
    self.norm_before_gate = norm_before_gate
    self.eps = eps

  def __call__(self, x, z):
    return self.sharded(x, z, shards_per_group=1, axis_name=None)

  def sharded(self, x, z, *, shards_per_group: int, axis_name: str | None):
    """Under tensor parallelism: x, z and the scale hold this device's contiguous 1/tp of the
    channels. shards_per_group = 1: its groups are whole here (the plain norm on them);
    s > 1: each group spans s consecutive devices of `axis_name`, whose sums of squares are
    added (an all-gather of one number per token) before normalising."""
    group_size = self.group_size if shards_per_group == 1 else x.shape[-1]
    return gated_rms_norm(x, z, self.scale[...], group_size, self.norm_before_gate, self.eps,
                          axis_name, shards_per_group)


@functools.partial(jax.checkpoint, static_argnums=(3, 4, 5, 6, 7))
def gated_rms_norm(x, z, scale, group_size: int, norm_before_gate: bool, eps: float,
                   axis_name: str | None, shards_per_group: int):
  """GatedRMSNorm's computation (float32 inside, x's dtype out); with shards_per_group > 1 a
  group is x's whole last axis on this device and its neighbours (GatedRMSNorm.sharded)."""
  gate = jax.nn.silu(z.astype(jnp.float32))
  x32 = x.astype(jnp.float32)
  if not norm_before_gate:
    x32 = x32 * gate
  if shards_per_group > 1:
    y = _spread_rms_norm(x32, scale, eps, axis_name, shards_per_group)
  else:
    grouped = x32.reshape(x32.shape[:-1] + (x32.shape[-1] // group_size, group_size))
    y = rms_norm(grouped, scale.reshape(-1, group_size), eps).reshape(x32.shape)
  if norm_before_gate:
    y = y * gate
  return y.astype(x.dtype)


def _spread_rms_norm(x32, scale, eps: float, axis_name: str, shards: int):
  """RMSNorm of a group of channels spread over `shards` consecutive devices of `axis_name`
  (this device holds x32's last axis of it)."""
  ss_BT1 = jnp.sum(x32 * x32, axis=-1, keepdims=True)
  all_BTn = jax.lax.all_gather(ss_BT1, axis_name, axis=x32.ndim - 1, tiled=True)
  first = jax.lax.axis_index(axis_name) // shards * shards
  ss_BT1 = jnp.sum(jax.lax.dynamic_slice_in_dim(all_BTn, first, shards, axis=-1), axis=-1,
                   keepdims=True)
  mean_BT1 = ss_BT1 / (x32.shape[-1] * shards)
  return x32 * jax.lax.rsqrt(mean_BT1 + eps) * scale.astype(jnp.float32)
