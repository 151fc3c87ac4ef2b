"""The per-level weights lambda of log-linear attention
(docs/algorithms/loglinear.md#lambda-parametrisation), shared by the log-linear Mamba-2 and
log-linear Gated DeltaNet layers.

    lambda_t^(l) = softplus(L_{h,l} * d_{t,h,l}),   d = W_lambda x_t

L starts at ones (HanGuo97/log-linear-attention's "positive" mode). The number of levels is
num_levels(model.max_seq_len) = ceil(log2 max_seq_len) + 1: enough for every position a
document can have, and no more (fla's layers fix 15 levels for 16K tokens). fla's log-linear
Mamba-2 takes d from an extra slice of in_proj; a separate bias-free projection is the same map.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from lloglin.layers.linear import dense
from lloglin.ops.hierarchy import num_levels


class LevelScales(nnx.Module):
  """x_BTD -> lam_BTHL (float32, positive) for H heads and num_levels(max_seq_len) levels."""

  def __init__(self, d_model: int, num_heads: int, max_seq_len: int, *, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.num_levels = num_levels(max_seq_len)
    self.proj = dense(d_model, num_heads * self.num_levels, dtype=dtype, param_dtype=param_dtype,
                      rngs=rngs)
    self.level_weight = nnx.Param(jnp.ones((num_heads, self.num_levels), param_dtype))

  def __call__(self, x_BTD):
    B, T, _ = x_BTD.shape
    d_BTHL = self.proj(x_BTD).reshape(B, T, -1, self.num_levels)  # -1: heads (or this
    return _level_weights(d_BTHL, self.level_weight[...])  # device's, under tensor parallelism)

  def tp_axes(self, prefix: str) -> dict:
    """The heads split over the tensor axis (the owning mixer's plan names them under
    `prefix`): the projection's columns are heads-major, so contiguous blocks are heads."""
    return {f"{prefix}proj.kernel": ("embed", "heads"), f"{prefix}level_weight": ("heads", None)}


@jax.checkpoint
def _level_weights(d_BTHL, weight_HL):
  """softplus(L * d) in float32. Rematerialised: the backward keeps d in the projection's dtype,
  not its float32 copies."""
  return jax.nn.softplus(weight_HL.astype(jnp.float32) * d_BTHL.astype(jnp.float32))
