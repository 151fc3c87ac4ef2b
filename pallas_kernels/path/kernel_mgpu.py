"""PaTH attention's forward kernel (kernel.py's `_fwd_kernel`) as a Mosaic GPU kernel
(`plgpu.kernel`), off the deprecated Pallas-Triton lowering: KernelConfig(backend='mosaic').
The backward kernels (dq, dkv) stay on Triton for now.

Same inputs, outputs and sums as the Triton kernel (kernel.py's docstring has the algorithm):
grid (H, B, M) with query chunk i = M - 1 - n (the longest rows first), one warpgroup per block.
- The diagonal tile: z (float32, from the chunk pieces) with the causal mask, gates and segment
  mask in registers, the first online-softmax state (m, l, o) from it; its values v_i and every
  tile below arrive by TMA.
- Level lv (static, L of them) where bit lv of i is set: the query copy Q^lv_i comes into SMEM
  once, then `plgpu.emit_pipeline` streams the 2^lv key copies K^lv_j and values v_j of
  j = mid - 1, ..., mid - 2^lv (two in flight); per key chunk one WGMMA for Q K^T, the online
  softmax in registers (exp2, float32 statistics), P rounded to the input dtype in SMEM (as the
  Triton kernel rounds it for its dot) and one WGMMA for P V. A level whose bit is clear is a
  lax.cond that skips it.
- Gates (PaTH-FoX) and segment ids come per chunk as rows (`_rows`): the query chunk's as row
  vectors, the key chunk's as column vectors of the tile (stored twice: Mosaic GPU's layout
  inference takes one SMEM row in one layout).
Limits: 16-bit inputs, the chunk (block_size) and K, V multiples of 64 (the WGMMA M dimension
and a 128-byte swizzle), at most 256.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.mgpu import (TILE, chunk_rows, col, f32, interpret_params, iota,
                                 product, row, transforms)
from pallas_kernels.path.common import MASKED

__all__ = ['check', 'forward']

_STAGES = 2
_LN2_INV = 1.4426950408889634


def check(call, dtype):
  """ValueError naming the first size the Mosaic forward cannot serve."""
  problems = [('dtype', jnp.dtype(dtype).name, jnp.dtype(dtype).itemsize == 2,
               'bfloat16 or float16')]
  problems += [(name, n, n % 64 == 0 and n <= 256, 'a multiple of 64, at most 256')
               for name, n in (('block_size', call.C), ('K', call.K), ('V', call.V))]
  for name, value, ok, expected in problems:
    if not ok:
      raise ValueError(f"PaTH attention (backend='mosaic'): {name}={value!r}; expected "
                       f"{expected}")


def _rows(gate_BHT, seg_BT, call):
  """[B, H, M X, C] per-chunk rows: the gate cumsum and the segment ids, each twice (as rows of
  the query chunk, as columns of a key chunk), those given; None without either."""
  rows = [x for x in (gate_BHT, seg_BT) if x is not None for _ in range(2)]
  return chunk_rows(rows, call.B, call.H, call.Tp, call.C) if rows else None


def _logits(s, q_side, k_side, qk_scale):
  """qk_scale (s + G_t - G_s) in log2 units, masked where the segments differ; q_side / k_side:
  (gate, seg) broadcasts of the tile's rows / columns, None where absent."""
  (gq, sq), (gk, sk) = q_side, k_side
  s = s * qk_scale
  if gq is not None:
    s = s + (gq - gk) * qk_scale
  return s if sq is None else jnp.where(sq == sk, s, MASKED)


def _kernel(qlv_ref, klv_ref, z_ref, v_ref, *refs, C, M, L, R, qk_scale, gate, seg):
  """One query chunk of one head (module docstring). refs: the rows if gate or seg; o, lse;
  SMEM scratch: the query copy, the diagonal z tile, the chunk's values, P, the chunk's rows if
  any, the lse row; a barrier."""
  refs = list(refs)
  X = 2 * (gate + seg)
  rows_ref = refs.pop(0) if X else None
  o_ref, lse_ref, q_smem, z_smem, v_smem, p_smem = refs[:6]
  rows_smem = refs[6] if X else None
  lse_smem, barrier = refs[-2:]
  h, b, n = (lax.axis_index(a) for a in ('h', 'b', 'n'))
  i = M - 1 - n
  here = pl.ds(i * C, C)
  dt = q_smem.dtype
  V = v_smem.shape[-1]

  def side(rows, as_rows):
    """(gate, seg) of a chunk's rows (None where absent), broadcast along its tile's rows (the
    query side) or columns (a key side), from the first or second copy of each."""
    if rows is None:
      return None, None
    take = (lambda x: row(rows, x, C, C)) if as_rows else (lambda x: col(rows, x, C))
    copy = 0 if as_rows else 1
    g = take(copy) if gate else None
    s = take(2 * gate + copy) if seg else None
    return g, s

  def load(src, dst):
    plgpu.copy_gmem_to_smem(src, dst, barrier)
    plgpu.barrier_wait(barrier)

  def pv(p, v_tile):
    p_smem[...] = p.astype(dt)
    plgpu.commit_smem()
    return product([(p_smem, v_tile)], (C, V))

  # the diagonal tile
  load(z_ref.at[b, h, here], z_smem)
  load(v_ref.at[b, here, h // R], v_smem)
  if X:
    load(rows_ref.at[b, h, pl.ds(i * X, X)], rows_smem)
  q_side = side(rows_smem, True)
  s = _logits(plgpu.load(z_smem, layout=TILE), q_side, side(rows_smem, False), qk_scale)
  s = jnp.where(iota(C, 0) >= iota(C, 1), s, MASKED)
  m = jnp.max(s, axis=1)
  p = jnp.exp2(s - lax.broadcast_in_dim(m, (C, C), [0]))
  carry = (m, jnp.sum(p, axis=1), pv(p, v_smem))

  def level(lv, carry):
    mid = (i >> lv) << lv

    def keys(carry):
      load(qlv_ref.at[b, h, lv, here], q_smem)

      def step(idx, k_smem, kv_smem, *rest):
        *k_rows, (m, l, o) = rest
        k_side = side(k_rows[0] if k_rows else None, False)
        s = _logits(product([(q_smem, k_smem.transpose((1, 0)))], (C, C)), q_side, k_side,
                    qk_scale)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s - lax.broadcast_in_dim(m_new, (C, C), [0]))
        return (m_new, alpha * l + jnp.sum(p, axis=1),
                lax.broadcast_in_dim(alpha, (C, V), [0]) * o + pv(p, kv_smem))

      tiling = transforms(64, jnp.dtype(dt).itemsize)
      specs = [plgpu.BlockSpec((C, q_smem.shape[-1]), lambda t: (mid - 1 - t, 0),
                               transforms=tiling),
               plgpu.BlockSpec((C, V), lambda t: (mid - 1 - t, 0), transforms=tiling)]
      inputs = [klv_ref.at[b, h // R, lv], v_ref.at[b, :, h // R]]
      if X:
        specs.append(plgpu.BlockSpec((X, C), lambda t: (mid - 1 - t, 0)))
        inputs.append(rows_ref.at[b, h])
      pipeline = plgpu.emit_pipeline(step, grid=(1 << lv,),
                                     max_concurrent_steps=min(_STAGES, 1 << lv),
                                     in_specs=specs, init_carry=carry)
      return pipeline(*inputs)

    return lax.cond(((i >> lv) & 1) == 1, keys, lambda carry: carry, carry)

  for lv in range(L):
    carry = level(lv, carry)
  m, l, o = carry
  o_ref[b, here, h] = (o / lax.broadcast_in_dim(l, (C, V), [0])).astype(o_ref.dtype)
  lse_smem[0] = m + jnp.log(l) * _LN2_INV
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[b, h, pl.ds(i, 1)])
  plgpu.wait_smem_to_gmem(0)


def forward(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, call):
  """kernel.py's forward kernel on Mosaic GPU: o_BTHV (v's dtype) and the float32 log2-sum-exp
  lse_BHT, as `_attend_fwd` takes them."""
  dt = qlv_BHLTK.dtype
  check(call, dt)
  B, H, L, Tp, K = qlv_BHLTK.shape
  C, M, V = call.C, call.M, call.V
  gate, seg = gate_BHT is not None, seg_BT is not None
  rows = _rows(gate_BHT, seg_BT, call)
  X = 2 * (gate + seg)
  tiling = transforms(64, jnp.dtype(dt).itemsize)
  sds = jax.ShapeDtypeStruct
  kernel = plgpu.kernel(
      functools.partial(_kernel, C=C, M=M, L=L, R=H // call.G, qk_scale=call.scale * _LN2_INV,
                        gate=gate, seg=seg),
      out_type=[sds((B, Tp, H, V), v_BTGV.dtype), sds((B, H, M, C), f32)],
      scratch_types=[plgpu.SMEM((C, K), dt, transforms=tiling), plgpu.SMEM((C, C), f32),
                     plgpu.SMEM((C, V), dt, transforms=tiling),
                     plgpu.SMEM((C, C), dt, transforms=tiling)]
      + ([plgpu.SMEM((X, C), f32)] if X else []) + [plgpu.SMEM((1, C), f32),
                                                    plgpu.Barrier(num_barriers=1)],
      grid=(H, B, M), grid_names=('h', 'b', 'n'),
      interpret=interpret_params(call.interpret), kernel_name='path_attention_fwd_mgpu')
  o, lse = kernel(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, *([rows] if X else []))
  return o, lse.reshape(B, H, Tp)
