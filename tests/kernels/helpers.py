"""Checks shared by the kernel tests."""

import jax
import numpy as np

from tests.ops.helpers import assert_close


def assert_rows_match_alone(fn, args, rows, rel=1e-5):
  """fn over the whole batch == fn on each of `rows` alone (catches offset overflow past 2^31,
  which gives garbage, not rounding: `rel` may be loose where XLA-side matmuls round differently
  for different batch sizes)."""
  jitted = jax.jit(fn)
  out = jitted(*args)
  for b in rows:
    ref = jitted(*[x[b:b + 1] for x in args])
    assert_close(np.asarray(out[b:b + 1], np.float32), np.asarray(ref, np.float32), rel=rel,
                 name=f'row {b}')
