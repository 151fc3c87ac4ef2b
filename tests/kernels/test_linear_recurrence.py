"""pallas_kernels.linear_recurrence, the pieces the Mamba-2 and GDN kernels share: the
one-document-per-row predicate, the launch configuration and the batch split below 2^31
elements."""

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import linear_recurrence as shared
from tests.kernels.helpers import one_document_rows
from tests.ops import linear_mixers as lm


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
