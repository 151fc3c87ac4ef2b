"""Short causal depthwise convolution (Mamba-2's conv1d, fla's ShortConvolution).

    y_t = act(bias + sum_{i=0}^{W-1} kernel[W-1-i] * x_{t-i})      per channel

Taps that would reach before the start of the row, or into another document of a packed row
(a different segment id, padding included), read zero: the convolution restarts at every
document start exactly as it does at the row start, so packed documents never leak into each
other.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def causal_conv(x_BTC, kernel_WC, bias_C=None, *, segment_ids_BT=None):
  """Depthwise causal convolution of width W; taps across documents read zero."""
  W = kernel_WC.shape[0]
  T = x_BTC.shape[1]
  y_BTC = x_BTC * kernel_WC[W - 1]
  for i in range(1, min(W, T)):
    shifted_BTC = jnp.pad(x_BTC[:, :T - i], ((0, 0), (i, 0), (0, 0)))
    if segment_ids_BT is not None:
      prev_BT = jnp.pad(segment_ids_BT[:, :T - i], ((0, 0), (i, 0)), constant_values=-1)
      # where (not a product) so NaN in another document cannot leak through a zero weight.
      shifted_BTC = jnp.where((prev_BT == segment_ids_BT)[..., None], shifted_BTC, 0)
    y_BTC = y_BTC + shifted_BTC * kernel_WC[W - 1 - i]
  if bias_C is not None:
    y_BTC = y_BTC + bias_C
  return y_BTC


@functools.partial(jax.checkpoint, static_argnums=(4,))
def _short_conv(x_BTC, kernel_WC, bias_C, segment_ids_BT, activation: bool):
  """causal_conv, then SiLU if `activation`. Rematerialised: the backward pass keeps x_BTC alone
  instead of every masked shifted copy of it and the pre-activation (W + 1 arrays of x's size,
  plus their masks; benchmarks/memory_accounting.py)."""
  y_BTC = causal_conv(x_BTC, kernel_WC, bias_C, segment_ids_BT=segment_ids_BT)
  return jax.nn.silu(y_BTC) if activation else y_BTC


class ShortConv(nnx.Module):
  """Depthwise causal conv over channels C with kernel width W, optional bias and SiLU.

  Init as torch's Conv1d (what mamba_ssm and fla use): U(-1/sqrt(W), 1/sqrt(W)) for a depthwise
  kernel, whose fan-in is W.
  """

  def __init__(self, channels: int, width: int, *, use_bias: bool, activation: bool,
               dtype, param_dtype, rngs: nnx.Rngs):
    if width < 1:
      raise ValueError(f"short conv width={width} must be >= 1")
    bound = width**-0.5
    init = lambda key, shape: jax.random.uniform(key, shape, param_dtype, -bound, bound)
    self.kernel = nnx.Param(init(rngs.params(), (width, channels)))
    self.bias = nnx.Param(init(rngs.params(), (channels,))) if use_bias else None
    self.activation = activation
    self.dtype = dtype

  def __call__(self, x_BTC, *, segment_ids_BT=None):
    return self.apply(x_BTC, self.kernel[...], None if self.bias is None else self.bias[...],
                      segment_ids_BT=segment_ids_BT)

  def apply(self, x_BTC, kernel_WC, bias_C=None, *, segment_ids_BT=None):
    """This conv with the given kernel (and bias): under tensor parallelism, the channels of
    this device, taken from a fused conv (lloglin.layers.tp_split)."""
    bias_C = None if bias_C is None else bias_C.astype(self.dtype)
    return _short_conv(x_BTC.astype(self.dtype), kernel_WC.astype(self.dtype), bias_C,
                       segment_ids_BT, self.activation)

  def init_state(self, batch_size: int, dtype):
    """The decode state at a sequence start: the last W - 1 inputs, all zero, [B, W - 1, C]."""
    W, C = self.kernel.shape
    return jnp.zeros((batch_size, W - 1, C), dtype)

  def extend(self, x_BTC, state_BWC, lengths_B=None):
    """The conv continued after the W - 1 inputs in state_BWC (zeros at a sequence start).

    Returns (y_BTC, the state after the first lengths_B[b] tokens of row b; default all T): a
    prefill of right-padded prompts and a one-token decode step (T = 1) are the same call.
    """
    W = self.kernel.shape[0]
    T = x_BTC.shape[1]
    xs_BSC = jnp.concatenate([state_BWC.astype(x_BTC.dtype), x_BTC], axis=1)  # S = W - 1 + T
    y_BTC = self(xs_BSC)[:, W - 1:]
    lengths_B = jnp.full(x_BTC.shape[:1], T) if lengths_B is None else lengths_B
    # The last W - 1 inputs of row b sit at S-positions lengths_B[b] .. lengths_B[b] + W - 2.
    idx_BW = jnp.asarray(lengths_B, jnp.int32)[:, None] + jnp.arange(W - 1)[None, :]
    state_BWC = jnp.take_along_axis(xs_BSC, idx_BW[..., None], axis=1).astype(state_BWC.dtype)
    return y_BTC, state_BWC
