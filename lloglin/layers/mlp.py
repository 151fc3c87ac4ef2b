"""Feed-forward blocks."""

import jax
from flax import nnx

from lloglin.layers.linear import dense


@jax.checkpoint
def _gated_activation(gate_BTF, up_BTF):
  """silu(gate) * up. Rematerialised: the backward keeps the two projections only, not SiLU's
  intermediates (the product itself is kept by the down projection)."""
  return jax.nn.silu(gate_BTF) * up_BTF


class SwiGLU(nnx.Module):
  """y = W_down (silu(W_gate x) * W_up x)."""

  def __init__(self, d_model: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = dense(d_model, hidden, **kw)
    self.up = dense(d_model, hidden, **kw)
    self.down = dense(hidden, d_model, **kw)

  def __call__(self, x_BTD):
    return self.down(_gated_activation(self.gate(x_BTD), self.up(x_BTD)))

  # Tensor parallelism (lloglin.parallel.tensor_parallel): gate / up split by columns, down by
  # rows, so __call__ on the local shards gives this device's partial sum as it is.

  def tp_param_axes(self, tp: int) -> dict:
    hidden = self.gate.kernel.shape[1]
    if hidden % tp:
      raise ValueError(f"tensor parallelism tp={tp} must divide the MLP width model.mlp_dim="
                       f"{hidden}")
    return {"gate.kernel": ("embed", "mlp"), "up.kernel": ("embed", "mlp"),
            "down.kernel": ("mlp", "embed")}

  def tp_call(self, x_BTD, *, tp: int, axis_name: str):
    del tp, axis_name  # the local shards' __call__ is this device's share
    return self(x_BTD)
