"""Pieces shared by the Pallas kernels of pallas_kernels.loglinear (Mamba-2 / SSD and GDN):
launch configuration, padding, the one-document-per-row predicate, batch splitting."""

from typing import NamedTuple

import jax.numpy as jnp

from lloglin.ops import delta

MAX_ELEMENTS = 2**31 - 1


class KernelConfig(NamedTuple):
  """Launch parameters of the Triton kernels (block_v: feature block of the output axis).

  Default: the fastest of those tried on an H200 at 16 heads x 128, T = 8192 (bf16), for the
  Mamba-2 / SSD kernels.
  """
  block_v: int = 32
  num_warps: int = 8
  num_stages: int = 2


def pow2(n):
  """Smallest power of two >= max(n, 16): the padded size of a feature axis."""
  return max(16, 1 << (n - 1).bit_length())


def padded_inputs(arrays, segment_ids_BT, chunk_size, feature_dims):
  """The kernels' view of [B, T, ...] inputs: T padded to whole chunks, tokens outside any
  document zeroed (NaN-safe, gradients too), and the last axis of arrays[i] zero-padded to
  feature_dims[i] (None: unchanged; None entries of arrays stay None).
  Returns (padded arrays, real_BP) with real_BP None without segment ids."""
  T = segment_ids_BT.shape[1] if segment_ids_BT is not None else next(
      x for x in arrays if x is not None).shape[1]
  P = -(-T // chunk_size) * chunk_size
  pad_t = lambda x: jnp.pad(x, [(0, 0), (0, P - T)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
  out = [None if x is None else pad_t(x) for x in arrays]
  real_BP = None
  if segment_ids_BT is not None:
    real_BP = jnp.pad(segment_ids_BT > 0, ((0, 0), (0, P - T)))
    out = delta.sanitize(real_BP, *out)
  return [x if x is None or d is None
          else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, d - x.shape[-1])])
          for x, d in zip(out, feature_dims, strict=True)], real_BP


def gate_layouts(g_BPH, lam_BPHL=None):
  """(g_BHP, lam_BHLP) in fp32: the kernels read one head's gates along the sequence."""
  g_BHP = jnp.moveaxis(g_BPH.astype(jnp.float32), 1, 2)
  lam_BHLP = None if lam_BPHL is None else jnp.transpose(lam_BPHL.astype(jnp.float32), (0, 2, 3, 1))
  return g_BHP, lam_BHLP


def one_document_per_row(segment_ids_BT):
  """True when every row is one document starting at position 0, then only padding (id 0)."""
  real_BT = segment_ids_BT > 0
  same_BT = (segment_ids_BT == segment_ids_BT[:, :1]) | ~real_BT
  padding_last = jnp.all(real_BT[:, 1:] <= real_BT[:, :-1])
  return jnp.all(same_BT) & padding_last


def in_row_batches(fn, args, per_row, name, out_axes=0):
  """fn(*args) on slices of the batch (axis 0 of every non-None array of args) so that no kernel
  array reaches 2^31 elements (int32 offsets); per_row: elements of the largest array per row.
  Outputs (an array or a tuple) are concatenated along out_axes (an int, or one per output)."""
  if per_row > MAX_ELEMENTS:
    raise ValueError(f'{name}: one batch row holds {per_row} elements; expected fewer than 2^31 '
                     f'(split the sequence)')
  rows = max(1, MAX_ELEMENTS // per_row)
  B = next(x for x in args if x is not None).shape[0]
  if B <= rows:
    return fn(*args)
  pieces = [fn(*[None if x is None else x[s:s + rows] for x in args]) for s in range(0, B, rows)]
  if not isinstance(pieces[0], tuple):
    return jnp.concatenate(pieces, axis=out_axes)
  axes = out_axes if isinstance(out_axes, tuple) else (out_axes,) * len(pieces[0])
  return tuple(jnp.concatenate([p[i] for p in pieces], axis=a) for i, a in enumerate(axes))
