"""Gate parameterisations shared by the recurrent mixers: decay rates, dt bias, unit vectors."""

import jax
import jax.numpy as jnp


def inverse_softplus(y):
  """x with softplus(x) = y (y > 0), written to stay accurate for small y."""
  return y + jnp.log(-jnp.expm1(-y))


def dt_bias_init(key, num_heads: int, *, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_floor: float = 1e-4, dtype=jnp.float32):
  """Mamba-2's dt bias (docs/algorithms/mamba2.md#initialisation): dt ~ exp(U(log dt_min,
  log dt_max)), floored at dt_floor, stored as inverse-softplus(dt) so that
  softplus(0 + dt_bias) = dt at init."""
  if not 0 < dt_min <= dt_max:
    raise ValueError(f"dt_min={dt_min}, dt_max={dt_max}: expected 0 < dt_min <= dt_max")
  log_dt = jax.random.uniform(key, (num_heads,), jnp.float32, jnp.log(dt_min), jnp.log(dt_max))
  dt = jnp.maximum(jnp.exp(log_dt), dt_floor)
  return inverse_softplus(dt).astype(dtype)


def a_log_init(key, num_heads: int, *, a_min: float, a_max: float, dtype=jnp.float32):
  """log A with A ~ U(a_min, a_max): the decay rate is -exp(A_log) (Mamba-2: U(1, 16); Gated
  DeltaNet: U(0, 16), kept off 0 by a 1e-4 floor so that the log is finite)."""
  if not 0 <= a_min < a_max:
    raise ValueError(f"a_min={a_min}, a_max={a_max}: expected 0 <= a_min < a_max")
  a = jax.random.uniform(key, (num_heads,), jnp.float32, a_min, a_max)
  return jnp.log(jnp.maximum(a, 1e-4)).astype(dtype)


@jax.checkpoint
def l2_normalize(x, eps: float = 1e-6):
  """x / |x| over the last axis, in float32 (fla's l2norm: x * rsqrt(sum x^2 + eps)).

  Rematerialised: the backward pass keeps x in its own dtype, not its float32 copies."""
  x32 = x.astype(jnp.float32)
  return x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)
