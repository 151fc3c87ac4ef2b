"""lloglin.ops.gdn alone: gradients with negative eigenvalues (beta up to 2) and zero gates, and
the one-token step as fla's delta rule written out by hand (the chain shared with the other
linear mixers runs in test_linear_mixers.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import gdn
from tests.ops import linear_mixers as lm


@pytest.mark.parametrize('name', ['gdn', 'loglinear_gdn'])
@pytest.mark.parametrize('beta_scale,g_zero_frac', [(2.0, 0.0), (1.0, 0.5), (2.0, 0.5)])
def test_gradients_negative_eigenvalues_and_zero_gates(name, beta_scale, g_zero_frac):
  lm.check_gradients(lm.FAMILIES[name], packed=False, beta_scale=beta_scale,
                     g_zero_frac=g_zero_frac)


def test_step_is_the_delta_rule():
  """fla's decay-then-correct form: S' = a S; v' = b (v - S'^T k); S = S' + k v'^T."""
  rng = np.random.default_rng(0)
  B, H, K, V = 2, 3, 4, 5
  q, k = rng.standard_normal((2, B, 1, K))
  v, S = rng.standard_normal((B, H, V)), rng.standard_normal((B, H, K, V))
  g, beta = -rng.uniform(size=(B, H)), rng.uniform(size=(B, H))
  o, S_new = gdn.gdn_step(*map(jnp.asarray, (q, k, v, g, beta, S)), scale=0.5)
  S1 = np.exp(g)[..., None, None] * S
  v1 = beta[..., None] * (v - np.einsum('bhkv,bk->bhv', S1, k[:, 0]))
  S_ref = S1 + k[:, :, :, None] * v1[:, :, None, :]
  np.testing.assert_allclose(S_new, S_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(o, np.einsum('bhkv,bk->bhv', S_ref, 0.5 * q[:, 0]), rtol=1e-5,
                             atol=1e-6)
