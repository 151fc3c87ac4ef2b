"""Mamba-2 SSD, Gated DeltaNet and their log-linear versions: recurrent == quadratic == chunked ==
decode (kernels.md §1-§5, §9).

One chain (tests/ops/linear_mixers.py) runs over the four families; the SSD and GDN update rules
are written out by hand at the end. Properties of the log-linear families alone (lam = 1, single
levels, Fenwick carries, level capacity) are in test_loglinear.py.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import delta, ssd
from tests.ops import linear_mixers as lm

SWEEP = [(1, 16), (15, 16), (16, 16), (17, 32), (63, 32), (64, 16), (65, 64), (127, 32),
         (128, 64), (200, 16), (256, 16)]


@pytest.fixture(params=list(lm.FAMILIES))
def fam(request):
  return lm.FAMILIES[request.param]


def test_recurrent_equals_quadratic(fam):
  lm.check_oracles_agree(fam)


@pytest.mark.parametrize('T,C', SWEEP)
def test_chunked_equals_oracle(fam, T, C):
  lm.check_chunked_vs_oracle(fam, T, C)


def test_chunk_size_invariance_and_final_state_fp64(fam):
  lm.check_chunk_invariance_fp64(fam)


def test_decode_every_position(fam):
  lm.check_decode_every_position(fam)


@pytest.mark.parametrize('T0', [1, 70])
def test_prefill_then_decode(fam, T0):
  lm.check_prefill_then_decode(fam, T0)


def test_packed_equals_separate(fam):
  lm.check_packed_equals_separate(fam)


def test_initial_state_with_packed_documents(fam):
  lm.check_initial_state_with_packed_documents(fam)


@pytest.mark.parametrize('tau', [None, 0.1])
def test_gradients_dense(fam, tau):
  lm.check_gradients(fam, packed=False, tau=tau)


def test_gradients_packed_nan_padding(fam):
  lm.check_gradients(fam, packed=True)


def test_gqa(fam):
  lm.check_gqa(fam)


def test_bf16(fam):
  lm.check_bf16(fam)


def test_bad_inputs(fam):
  lm.check_bad_inputs(fam)


@pytest.mark.parametrize('name', ['gdn', 'loglinear_gdn'])
@pytest.mark.parametrize('beta_scale,g_zero_frac', [(2.0, 0.0), (1.0, 0.5), (2.0, 0.5)])
def test_gradients_negative_eigenvalues_and_zero_gates(name, beta_scale, g_zero_frac):
  lm.check_gradients(lm.FAMILIES[name], packed=False, beta_scale=beta_scale,
                     g_zero_frac=g_zero_frac)


def test_step_is_the_mamba2_update():
  """h_t = exp(dt A) h + dt B x^T, y = h^T C on one token, written out by hand."""
  rng = np.random.default_rng(0)
  B, H, K, V = 2, 3, 4, 5
  q, k = rng.standard_normal((2, B, 1, K))
  v, S = rng.standard_normal((B, H, V)), rng.standard_normal((B, H, K, V))
  g = -rng.uniform(size=(B, H))
  o, S_new = ssd.ssd_step(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(g),
                          jnp.asarray(S), scale=0.5)
  S_ref = np.exp(g)[..., None, None] * S + k[:, :, :, None] * v[:, :, None, :]
  np.testing.assert_allclose(S_new, S_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(o, np.einsum('bhkv,bk->bhv', S_ref, 0.5 * q[:, 0]), rtol=1e-5,
                             atol=1e-6)


def test_step_is_the_delta_rule():
  """fla's decay-then-correct form: S' = a S; v' = b (v - S'^T k); S = S' + k v'^T."""
  rng = np.random.default_rng(0)
  B, H, K, V = 2, 3, 4, 5
  q, k = rng.standard_normal((2, B, 1, K))
  v, S = rng.standard_normal((B, H, V)), rng.standard_normal((B, H, K, V))
  g, beta = -rng.uniform(size=(B, H)), rng.uniform(size=(B, H))
  o, S_new = delta.gdn_step(*map(jnp.asarray, (q, k, v, g, beta, S)), scale=0.5)
  S1 = np.exp(g)[..., None, None] * S
  v1 = beta[..., None] * (v - np.einsum('bhkv,bk->bhv', S1, k[:, 0]))
  S_ref = S1 + k[:, :, :, None] * v1[:, :, None, :]
  np.testing.assert_allclose(S_new, S_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(o, np.einsum('bhkv,bk->bhv', S_ref, 0.5 * q[:, 0]), rtol=1e-5,
                             atol=1e-6)
