"""Pieces shared by the Mosaic GPU training kernels (pallas_kernels.gdn.chunkwise_mgpu,
pallas_kernels.mamba2.kernel_mgpu): register layouts, SMEM operand tiling, WGMMA products, and the
per-chunk row vectors that stream in beside a chunk's tiles.

Conventions of those kernels: one warpgroup per block; [C, *] tiles of a chunk stream GMEM -> SMEM
by TMA (`plgpu.emit_pipeline`); matmuls are WGMMAs whose operands sit in SMEM in a 16-bit dtype
(the Mosaic GPU interpreter takes no register A operand), accumulating in float32 registers laid
out as `TILE`; per-token float32 vectors come in as rows of one [X, C] block per chunk
(`chunk_rows`) and are broadcast in registers along the rows (`row`) or the columns (`col`) of a
tile."""

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

f32 = jnp.float32
TILE = plgpu.Layout.WGMMA
ROWS = plgpu.Layout.WGMMA.reduce(1)    # a [rows] vector, one value per row of a WGMMA tile
COLS = plgpu.Layout.WGMMA.reduce(0)    # a [cols] vector, one value per column of a WGMMA tile
SMEM_BYTES = 232448 - 1024             # SMEM a block may take on sm_90, less barriers


def transforms(BV, itemsize):
  """SMEM tiling and swizzle of every WGMMA operand tile: one swizzle for all (the two operands
  of a WGMMA must share it), the widest that a [*, BV] tile's rows hold (128, 64 or 32 bytes)."""
  swizzle = min(128, BV * itemsize)
  return (plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle))


def _matmuls(pairs, acc):
  """sum of a @ b over pairs into the zeroed WGMMA accumulator acc, read back into registers
  (which waits for them). (Accumulating onto a carried value with
  pl.run_state(...)(plgpu.ACC.init(S)) would save one add, but the Mosaic GPU interpreter does not
  run pl.run_state.)"""
  for a_smem, b_smem in pairs:
    plgpu.wgmma(acc, a_smem, b_smem)
  return acc[...]


def product(pairs, shape):
  """sum of a @ b over the (A, B) SMEM operand pairs, float32 [M, N] in the TILE layout; returns
  once the WGMMAs are done (their SMEM may then be rewritten)."""
  return pl.run_scoped(functools.partial(_matmuls, pairs), plgpu.ACC(shape, f32))


def zeros(shape):
  """float32 zeros in the TILE layout ([M, N]) or the ROWS layout ([M]), e.g. for the branch of
  a lax.cond that skips a product."""
  return plgpu.layout_cast(jnp.zeros(shape, f32), TILE if len(shape) == 2 else ROWS)


def row(rows_smem, x, C, n):
  """Row vector x of a chunk's rows, broadcast along [C, n] (one value per row)."""
  return lax.broadcast_in_dim(plgpu.load(rows_smem.at[x], layout=ROWS), (C, n), [0])


def col(rows_smem, x, C):
  """Row vector x of a chunk's rows, broadcast along [C, C] (one value per column). A vector read
  both as rows and as columns must be stored twice: Mosaic GPU's layout inference finds no layout
  for one SMEM row loaded in both."""
  return lax.broadcast_in_dim(plgpu.load(rows_smem.at[x], layout=COLS), (C, C), [1])


def iota(C, dim):
  """[C, C] int32 row (dim 0) or column (dim 1) index in the TILE layout."""
  return plgpu.broadcasted_iota(jnp.int32, (C, C), dim, layout=TILE)


def chunk_rows(rows, B, H, P, C):
  """[B, H, N X, C] float32: per chunk, the X row vectors `rows` ([B, H, P], or [B, P] for every
  head) as one [X, C] TMA block, prefetched by the pipeline with the chunk's tiles (loaded from
  GMEM in the chunk's step, they would put a GMEM round trip on the sequential path)."""
  N = P // C
  full = [jnp.broadcast_to(x[:, None] if x.ndim == 2 else x, (B, H, P)).astype(f32)
          for x in rows]
  return jnp.stack([x.reshape(B, H, N, C) for x in full], axis=3).reshape(B, H, N * len(rows), C)


def interpret_params(interpret):
  """plgpu.kernel's `interpret` argument: the Mosaic GPU interpreter's parameters, or None."""
  return plgpu.InterpretGPUParams() if interpret else None

