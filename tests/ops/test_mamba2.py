"""lloglin.ops.mamba2 alone: the one-token step is the Mamba-2 update written out by hand (the
chain shared with the other linear mixers runs in test_linear_mixers.py)."""

import jax.numpy as jnp
import numpy as np

from lloglin.ops import mamba2


def test_step_is_the_mamba2_update():
  """h_t = exp(dt A) h + dt B x^T, y = h^T C on one token, written out by hand."""
  rng = np.random.default_rng(0)
  B, H, K, V = 2, 3, 4, 5
  q, k = rng.standard_normal((2, B, 1, K))
  v, S = rng.standard_normal((B, H, V)), rng.standard_normal((B, H, K, V))
  g = -rng.uniform(size=(B, H))
  o, S_new = mamba2.ssd_step(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(g),
                             jnp.asarray(S), scale=0.5)
  S_ref = np.exp(g)[..., None, None] * S + k[:, :, :, None] * v[:, :, None, :]
  np.testing.assert_allclose(S_new, S_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(o, np.einsum('bhkv,bk->bhv', S_ref, 0.5 * q[:, 0]), rtol=1e-5,
                             atol=1e-6)
