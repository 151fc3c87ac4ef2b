"""Next-token sampling: greedy, temperature, top-k and top-p (nucleus), from a PRNG key."""

import jax
import jax.numpy as jnp


def check_sampling(*, temperature: float, top_k: int, top_p: float):
  if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
    raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got "
                     f"temperature={temperature}, top_p={top_p}, top_k={top_k}")


def sample_token(logits_BV, key, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
  """One token per row. temperature == 0 is greedy; top_k == 0 and top_p == 1 disable those."""
  check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
  logits_BV = logits_BV.astype(jnp.float32)
  if temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / temperature
  neg_inf = jnp.finfo(jnp.float32).min
  if top_k:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, neg_inf, logits_BV)
  if top_p < 1:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
    # The smallest set whose mass reaches top_p: keep tokens whose preceding mass is < top_p.
    keep_BV = (cum_BV - jax.nn.softmax(sorted_BV, axis=-1)) < top_p
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, neg_inf, logits_BV)
  return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)
