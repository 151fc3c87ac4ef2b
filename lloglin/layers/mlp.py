"""Feed-forward blocks."""

import jax
from flax import nnx

from lloglin.layers.linear import dense


class SwiGLU(nnx.Module):
  """y = W_down (silu(W_gate x) * W_up x)."""

  def __init__(self, d_model: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = dense(d_model, hidden, **kw)
    self.up = dense(d_model, hidden, **kw)
    self.down = dense(hidden, d_model, **kw)

  def __call__(self, x_BTD):
    return self.down(jax.nn.silu(self.gate(x_BTD)) * self.up(x_BTD))
