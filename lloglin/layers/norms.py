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
