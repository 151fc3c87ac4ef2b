"""Projections. One constructor so every mixer's projections share init and dtype handling."""

from flax import nnx


def dense(d_in: int, d_out: int, *, dtype, param_dtype, rngs: nnx.Rngs, use_bias: bool = False,
          kernel_init=nnx.initializers.lecun_normal()) -> nnx.Linear:
  """A bias-free (by default) linear map with lecun-normal init, computing in `dtype`."""
  return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=kernel_init, rngs=rngs)
