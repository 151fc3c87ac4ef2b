"""Batch-1 GEMV `y = W x` as a Mosaic GPU kernel: the weight-streaming core of a FlashFormer-style
decode step, written to find out whether Mosaic GPU's TMA pipeline streams weights at the copy
bandwidth, which the Triton fused kernel (one 16 KB tile in flight per SM) falls well short of.

Each CUDA block owns `rows` output rows and one of `splits` column ranges; `plgpu.emit_pipeline`
streams its [rows, tk] weight tiles and the matching x slices through shared memory by TMA,
`stages` tiles in flight. A tile is multiplied in registers (WGMMA layout: rows % 64 == 0) and
summed over its columns into a float32 [rows] accumulator; the `splits` partial sums are added
in XLA. Bytes, not FLOPs, bound it: no tensor cores.

Finding (`python -m experiments.gemv_mgpu.bench_gemv`; figures: benchmarks/RESULTS.md#lab-log,
"a Mosaic GPU GEMV"): its GPU test passes, and on the largest decode matrices it takes about the
time of XLA's GEMV: a TMA pipeline streams weights at the read bandwidth. The `_tile_step` of
pallas_kernels/fused_decode/kernel_mgpu.py does the same tile arithmetic inside the fused decode
(x there is staged in SMEM once per phase, not streamed); this standalone form stays as the
microbenchmark of that step.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu


def gemv(w_ND, x_D, *, rows=64, tk=128, splits=1, stages=4, interpret=False):
  """`w_ND @ x_D` in float32 (bf16 or float32 inputs). `rows` (a multiple of 64) must divide N
  and `tk * splits` must divide D."""
  N, D = w_ND.shape
  if x_D.shape != (D,):
    raise ValueError(f"x_D: expected shape ({D},) to match w_ND {w_ND.shape}, got {x_D.shape}")
  if rows % 64 or N % rows:
    raise ValueError(f"rows: expected a multiple of 64 dividing N={N}, got {rows}")
  if D % (tk * splits):
    raise ValueError(f"tk * splits: expected a divisor of D={D}, got {tk} * {splits}")
  steps = D // (tk * splits)

  def body(w_gmem, x_gmem, out_gmem):
    r, s = lax.axis_index("rows"), lax.axis_index("splits")

    def step(_, w_smem, x_smem, acc):
      w = plgpu.load(w_smem, layout=plgpu.Layout.WGMMA).astype(jnp.float32)
      x = plgpu.load(x_smem, layout=plgpu.Layout.WGMMA.reduce(0)).astype(jnp.float32)
      return acc + (w * lax.broadcast_in_dim(x, (rows, tk), [1])).sum(axis=1)

    pipeline = plgpu.emit_pipeline(
        step, grid=(steps,),
        in_specs=[plgpu.BlockSpec((rows, tk), lambda k: (0, k)),
                  plgpu.BlockSpec((tk,), lambda k: (k,))],
        max_concurrent_steps=stages,
        init_carry=plgpu.layout_cast(jnp.zeros((rows,), jnp.float32),
                                     plgpu.Layout.WGMMA.reduce(1)))
    cols = pl.ds(s * steps * tk, steps * tk)
    out_gmem[s, pl.ds(r * rows, rows)] = pipeline(w_gmem.at[pl.ds(r * rows, rows), cols],
                                                  x_gmem.at[cols])

  kernel = plgpu.kernel(
      body, out_type=jax.ShapeDtypeStruct((splits, N), jnp.float32),
      grid=(N // rows, splits), grid_names=("rows", "splits"),
      interpret=plgpu.InterpretGPUParams() if interpret else None)
  return kernel(w_ND, x_D).sum(0)

