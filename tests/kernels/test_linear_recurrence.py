"""pallas_kernels.linear_recurrence, the pieces the Mamba-2 and GDN kernels share: the
one-document-per-row predicate, the launch configuration and the batch split below 2^31
elements (on a GPU: every kernel family past 2^31 elements)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import hierarchy
from pallas_kernels import gdn as pk_gdn
from pallas_kernels import linear_recurrence as shared
from pallas_kernels import mamba2 as pk_mamba2
from tests.kernels.helpers import one_document_rows
from tests.ops import linear_mixers as lm
from tests.ops.helpers import assert_close


def test_one_document_per_row_predicate():
  assert bool(shared.one_document_per_row(jnp.asarray(one_document_rows())))
  assert not bool(shared.one_document_per_row(jnp.asarray(lm.packed_segment_ids())))
  assert not bool(shared.one_document_per_row(jnp.asarray([[0, 1, 1, 1]])))   # padding first
  assert not bool(shared.one_document_per_row(jnp.asarray([[1, 1, 0, 1]])))   # a gap, then more


def test_launch_config_keeps_the_grid_full():
  given = shared.KernelConfig(16, 2, 3)
  assert shared.launch_config(given, shared.SSD_CONFIG, 1, 128) == given
  # B x H = 128 fills the GPU at the tuned width; a quarter of that (T = 32K) takes narrower
  # blocks, never below 16; V is padded to a power of two first.
  assert shared.launch_config(None, shared.SSD_CONFIG, 128, 128) == shared.SSD_CONFIG
  assert shared.launch_config(None, shared.SSD_CONFIG, 32, 128).block_v == 32
  assert shared.launch_config(None, shared.GDN_CONFIG, 32, 128).block_v == 32
  assert shared.launch_config(None, shared.GDN_CONFIG, 1, 128).block_v == 16
  assert shared.launch_config(None, shared.GDN_CONFIG, 256, 40).block_v == 64
  assert shared.launch_config(None, shared.GDN_CONFIG, 32, 100) == shared.GDN_CONFIG._replace(
      block_v=32)


def test_batch_split_below_2_31_elements():
  """in_row_batches: rows that would pass 2^31 elements run in slices of the batch, outputs
  concatenated on their batch axis; one row too large raises."""
  x = jnp.arange(5 * 3, dtype=jnp.float32).reshape(5, 3)
  fn = lambda a, b: (a * 2, jnp.moveaxis(a, 0, 1) + b[:, 0])
  out = shared.in_row_batches(fn, (x, x), 2**30, 'test', out_axes=(0, 1))   # 1 row per slice
  np.testing.assert_array_equal(out[0], x * 2)
  np.testing.assert_array_equal(out[1], x.T + x[:, 0])
  with pytest.raises(ValueError, match='2\\^31'):
    shared.in_row_batches(fn, (x, x), 2**31, 'test')


# The kernel families past 2^31 elements, with the argument names of each (lm.FAMILIES order).
LARGE_INDEX_KERNELS = {
    'loglinear_mamba2': (pk_mamba2.loglinear_ssd_chunked, ('q', 'k', 'v', 'g', 'lam')),
    'gdn': (pk_gdn.gdn_chunked, ('q', 'k', 'v', 'g', 'beta')),
    'loglinear_gdn': (pk_gdn.loglinear_gdn_chunked, ('q', 'k', 'v', 'g', 'beta', 'lam')),
}


@pytest.mark.gpu
@pytest.mark.parametrize('family', sorted(LARGE_INDEX_KERNELS))
def test_gpu_more_than_2_31_elements(family):
  """v and the output hold B*T*H*V = 17 x 65536 x 1 x 2048 = 2^31 + 2^27 elements: no int32
  offset overflow (state-spaces/mamba#1015): the batch runs in slices (in_row_batches). Rows at
  the start, middle and end equal the same row run alone (an overflow gives garbage, not
  rounding); forward only. One head of 2048 values rather than 16 of 128 keeps the per-head
  float32 intermediates (gates, UT transforms) 16x smaller, so that the case fits an 80 GB H100
  beside other test processes."""
  fn, names = LARGE_INDEX_KERNELS[family]
  B, T, H, K, V = 17, 65536, 1, 128, 2048
  ks = jax.random.split(jax.random.PRNGKey(0), 6)
  unit = lambda x: (x / jnp.linalg.norm(x, axis=-1, keepdims=True)).astype(jnp.bfloat16)
  x = dict(q=unit(jax.random.normal(ks[0], (B, T, 1, K))),
           k=unit(jax.random.normal(ks[1], (B, T, 1, K))),
           v=jax.random.normal(ks[2], (B, T, H, V), jnp.bfloat16),
           g=jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H))),
           beta=jax.nn.sigmoid(jax.random.normal(ks[4], (B, T, H))),
           lam=jax.nn.softplus(jax.random.normal(ks[5], (B, T, H, hierarchy.num_levels(T)))))
  args = [x[n] for n in names]
  assert args[2].size > 2**31
  jitted = jax.jit(fn)
  out = jitted(*args)
  assert out.size > 2**31
  for b in (0, B // 2, B - 1):
    ref = jitted(*[a[b:b + 1] for a in args])
    # rel: XLA-side matmuls (UT transforms) may round differently for 17 rows than for one
    assert_close(np.asarray(out[b:b + 1], np.float32), np.asarray(ref, np.float32), rel=1e-3,
                 name=f'{family} row {b}')
