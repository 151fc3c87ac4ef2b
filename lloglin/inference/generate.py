"""Generation by re-running the full forward on a fixed-size token buffer (any mixer).

This is the simple reference path: O(T^2) per sequence but exact for every architecture.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lloglin.inference.sampling import sample_token


def generate(model: nnx.Module, prompt: Sequence[int], max_new_tokens: int, *, seed: int = 0,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_tokens: Sequence[int] = (), on_token: Callable[[int], None] | None = None,
             ) -> list[int]:
  """Prompt continuation (new tokens only). `on_token` streams each token as it is chosen."""
  if not prompt:
    raise ValueError("prompt is empty; generation needs at least one token")
  total = len(prompt) + max_new_tokens
  if total > model.cfg.max_seq_len:
    raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds "
                     f"model.max_seq_len={model.cfg.max_seq_len}")
  graphdef, state = nnx.split(model)

  @jax.jit
  def next_token(state, tokens_1T, t, key):
    logits_1TV = nnx.merge(graphdef, state)(tokens_1T)
    return sample_token(logits_1TV[:, t - 1], key, temperature=temperature, top_k=top_k,
                        top_p=top_p)[0]

  tokens = np.zeros((1, total), np.int32)
  tokens[0, :len(prompt)] = prompt
  key = jax.random.key(seed)
  out = []
  for t in range(len(prompt), total):
    key, sub = jax.random.split(key)
    token = int(next_token(state, jnp.asarray(tokens), t, sub))
    tokens[0, t] = token
    out.append(token)
    if on_token is not None:
      on_token(token)
    if token in stop_tokens:
      break
  return out
