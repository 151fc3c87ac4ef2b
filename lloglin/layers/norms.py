"""Normalisation layers."""

import jax
import jax.numpy as jnp
from flax import nnx


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
    gate = jax.nn.silu(z.astype(jnp.float32))
    x32 = x.astype(jnp.float32)
    if not self.norm_before_gate:
      x32 = x32 * gate
    g = self.group_size
    grouped = x32.reshape(x32.shape[:-1] + (x32.shape[-1] // g, g))
    y = rms_norm(grouped, self.scale[...].reshape(-1, g), self.eps).reshape(x32.shape)
    if self.norm_before_gate:
      y = y * gate
    return y.astype(x.dtype)
