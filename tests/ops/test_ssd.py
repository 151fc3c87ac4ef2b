"""lloglin.ops.ssd: recurrent == quadratic == chunked == decode (kernels.md §1, §9)."""

import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import ssd
from tests.ops import linear_mixers as lm

FAM = lm.FAMILIES['ssd']
SWEEP = [(1, 16), (15, 16), (16, 16), (17, 32), (63, 32), (64, 16), (65, 64), (127, 32),
         (128, 64), (200, 16), (256, 16)]


def test_recurrent_equals_quadratic():
  lm.check_oracles_agree(FAM)


@pytest.mark.parametrize('T,C', SWEEP)
def test_chunked_equals_oracle(T, C):
  lm.check_chunked_vs_oracle(FAM, T, C)


def test_chunk_size_invariance_and_final_state_fp64():
  lm.check_chunk_invariance_fp64(FAM)


def test_decode_every_position():
  lm.check_decode_every_position(FAM)


@pytest.mark.parametrize('T0', [1, 70])
def test_prefill_then_decode(T0):
  lm.check_prefill_then_decode(FAM, T0)


def test_packed_equals_separate():
  lm.check_packed_equals_separate(FAM)


@pytest.mark.parametrize('tau', [None, 0.1])
def test_gradients_dense(tau):
  lm.check_gradients(FAM, packed=False, tau=tau)


def test_gradients_packed_nan_padding():
  lm.check_gradients(FAM, packed=True)


def test_gqa():
  lm.check_gqa(FAM)


def test_bf16():
  lm.check_bf16(FAM)


def test_bad_inputs():
  lm.check_bad_inputs(FAM)


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
