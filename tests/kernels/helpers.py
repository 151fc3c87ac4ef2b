"""Checks shared by the kernel tests."""

import jax
import jax.numpy as jnp
import numpy as np

from tests.ops.helpers import assert_close


def assert_bf16_kernel_matches_fp32(kernel_fn, reference_fn, args, cot, grad_names):
  """docs/correctness.md#gpu-tests: the kernel on bf16 inputs against the reference on their float32
  copies (matmul precision HIGHEST, never TF32): forward rel <= 5e-3, dq/dk/dv <= 1e-2, the other
  gradients (gates, beta, lambda) <= 2e-2. `cot` weights the output in the loss."""
  loss = lambda fn: lambda *a: jnp.sum(fn(*a).astype(cot.dtype) * cot)  # noqa: E731
  argnums = tuple(range(len(args)))
  ref_args = [a.astype(jnp.float32) for a in args]
  got = jax.jit(jax.grad(loss(kernel_fn), argnums=argnums))(*args)
  with jax.default_matmul_precision('highest'):
    want = jax.jit(jax.grad(loss(reference_fn), argnums=argnums))(*ref_args)
    ref_out = jax.jit(reference_fn)(*ref_args)
  assert_close(jax.jit(kernel_fn)(*args).astype(jnp.float32), ref_out, rel=5e-3, name='forward')
  for name, x, y in zip(grad_names, got, want, strict=True):
    assert_close(x.astype(jnp.float32), y, rel=1e-2 if name in ('dq', 'dk', 'dv') else 2e-2,
                 name=name)


def continuation_segments(layout, B, T):
  """Segment ids of the state tests: None, or (layout 'packed') a second document from t = 20 in
  row 0 (it starts empty; its state is the final one) and padding from t = 40 in row 1."""
  if layout != 'packed':
    return None
  seg = np.ones((B, T), np.int32)
  seg[0, 20:] = 2
  seg[1, 40:] = 0
  return jnp.asarray(seg)


def one_document_rows():
  """Two rows, each one document from position 0 (ids 1 and 7), the second then padded."""
  return np.array([[1] * 40, [7] * 29 + [0] * 11], np.int32)
