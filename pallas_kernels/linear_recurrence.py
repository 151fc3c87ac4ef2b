"""Pieces shared by the chunked linear-recurrence kernels, pallas_kernels.mamba2 (SSD and
log-linear Mamba-2) and pallas_kernels.gdn (GDN and log-linear GDN): launch configuration,
padding, the one-document-per-row predicate, batch splitting, and two helpers of the kernel
bodies (`dot`, `level_masks`)."""

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from lloglin.ops import linear_recurrence

MAX_ELEMENTS = 2**31 - 1
HIGHEST = lax.Precision.HIGHEST


class KernelConfig(NamedTuple):
  """Launch parameters of the kernels (block_v: feature block of the output axis, the scans'
  grid axis; GDN's chunk-parallel kernels loop over V in blocks of their own, gdn.chunkwise's
  CHUNK_BLOCK_V; num_warps and num_stages: the Triton kernels'). backend: 'auto' (each kernel's
  measured choice: GDN's kernels but chunk_bwd on Mosaic GPU where they serve the launch on a
  Hopper GPU,
  pallas_kernels.gdn.chunkwise.AUTO_MOSAIC; every other kernel on Triton), 'triton' (the
  Pallas-Triton lowering) or 'mosaic' (Mosaic GPU, where a kernel has that form: every GDN
  kernel, pallas_kernels.gdn.chunkwise_mgpu; the level scan of Mamba-2 SSD and log-linear
  Mamba-2, pallas_kernels.mamba2.kernel_mgpu; log-linear GDN's levels as GDN runs on GDN's
  kernels, its level-stream scans, level_streams='scan', on Triton). PaTH's kernels take their
  own KernelConfig (pallas_kernels.path.common)."""
  block_v: int = 32
  num_warps: int = 8
  num_stages: int = 2
  backend: str = 'auto'


# Each kernel's default (block_v, num_warps, num_stages): the fastest fwd+bwd of a sweep on a
# Hopper GPU at T = 8192, 16 heads x 128, bf16 (`python -m benchmarks.bench_mixers
# --kernel_configs ...`; the sweep: benchmarks/RESULTS.md#lab-log, "Launch configurations tuned").
# Log-linear GDN's backward does not fit in shared memory at two stages. At longer T a batch of
# the same tokens has fewer rows, so the grid has fewer programs and wide blocks leave SMs idle:
# `launch_config` narrows block_v until the grid fills the GPU.
SSD_CONFIG = KernelConfig(block_v=64, num_warps=4, num_stages=2)
LOGLINEAR_SSD_CONFIG = KernelConfig(block_v=32, num_warps=8, num_stages=2)
# GDN's state scans on Mosaic GPU were 1.5x (T = 8K) to 3x (32K) faster than the Triton ones on
# an H100, its output kernels 1.2-1.6x, its UT transform 1.3x (benchmarks/RESULTS.md, "GDN's
# state scans on Mosaic GPU", "GDN kernels timed per backend", "GDN at fla's speed"): 'auto'
# takes them on Hopper (gdn.chunkwise.AUTO_MOSAIC).
GDN_CONFIG = KernelConfig(block_v=128, num_warps=8, num_stages=1)
LOGLINEAR_GDN_CONFIG = KernelConfig(block_v=64, num_warps=4, num_stages=1)
MIN_PROGRAMS = 128   # about one program per SM of an H100 / H200 (132 SMs)


def launch_config(config, default, rows_x_heads, V, backends=('triton',)):
  """config when given (ValueError if its backend is neither 'auto' nor one of `backends`, those
  the caller's kernels have); else `default` with block_v halved (down to 16) while the grid, one
  program per batch row, head and block of the (power-of-two padded) feature axis V, would have
  fewer than MIN_PROGRAMS programs."""
  if config is not None:
    if config.backend not in ('auto', *backends):
      raise ValueError(f"config.backend={config.backend!r}; expected one of {('auto', *backends)}")
    return config
  block_v = min(default.block_v, pow2(V))
  while block_v > 16 and rows_x_heads * (pow2(V) // block_v) < MIN_PROGRAMS:
    block_v //= 2
  return default._replace(block_v=block_v)


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
    out = linear_recurrence.sanitize(real_BP, *out)
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


# ------------------------------------------------------------------------------------------------
# Inside the kernels


def dot(x, y, mm_dtype, contract=(1, 0)):
  """x @ y (contract=(1, 0)), x @ y^T ((1, 1)) or x^T @ y ((0, 0)); fp32 accumulation."""
  return lax.dot_general(x.astype(mm_dtype), y.astype(mm_dtype),
                         (((contract[0],), (contract[1],)), ((), ())), precision=HIGHEST,
                         preferred_element_type=jnp.float32)


def level_masks(x, levels):
  """[lvl == l for l < levels] with lvl = bit_length(x), x = pos_t XOR pos_s >= 0."""
  return [x == 0] + [(x >> (l - 1)) == 1 for l in range(1, levels)]
