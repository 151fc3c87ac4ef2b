"""PaTH attention's three kernels (kernel.py's `_fwd_kernel`, `_dq_kernel`, `_dkv_kernel`) as
Mosaic GPU kernels (`plgpu.kernel`), off the deprecated Pallas-Triton lowering:
KernelConfig(backend='mosaic').

Same inputs, outputs and sums as the Triton kernels (kernel.py's docstring has the algorithm).
The forward: grid (H, B, M) with query chunk i = M - 1 - n (the longest rows first), one
warpgroup per block.
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
  inference takes one SMEM row in one layout); the backward adds each chunk's log-sum-exp and
  delta = rowsum(o dO).
- dq (grid as the forward): the diagonal tile's dS (the dz output) and, per level whose bit of i
  is set, the key copies pipelined as in the forward, dS = P o (dO v^T - delta) from the saved
  log-sum-exp, dQ^lv += dS K^lv (dS rounded into SMEM); a level whose bit is clear writes zeros.
- dkv (grid (H, B, M) over key chunks j, per query head): the diagonal tile's dv, then per level
  whose bit of j is clear the query copies Q^lv_r, dO_r and the statistics of r = start, ...,
  start + 2^lv - 1 pipelined (steps past the last chunk masked), dv += P^T dO, dK^lv += dS^T Q^lv
  (transposed operands read in place).
Limits: 16-bit inputs, the chunk (block_size) and K, V multiples of 64 (the WGMMA M dimension
and a 128-byte swizzle), at most 256.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.mgpu import (TILE, chunk_rows, col, f32, interpret_params, iota, product, row,
                                 transforms, zeros)
from pallas_kernels.path.common import MASKED

__all__ = ['backward', 'check', 'forward']

_STAGES = 2
_LN2_INV = 1.4426950408889634


def check(call, *dtypes):
  """ValueError naming the first size or dtype the Mosaic kernels cannot serve (q, k, v: one
  16-bit dtype)."""
  names = sorted({jnp.dtype(d).name for d in dtypes})
  problems = [('dtype', names[0] if len(names) == 1 else names,
               len(names) == 1 and jnp.dtype(names[0]).itemsize == 2,
               'one of bfloat16 or float16 for q, k and v')]
  problems += [(name, n, n % 64 == 0 and n <= 256, 'a multiple of 64, at most 256')
               for name, n in (('block_size', call.C), ('K', call.K), ('V', call.V))]
  for name, value, ok, expected in problems:
    if not ok:
      raise ValueError(f"PaTH attention (backend='mosaic'): {name}={value!r}; expected "
                       f"{expected}")


def _rows(call, gate_BHT, seg_BT, *stats_BHT):
  """[B, H, M X, C] per-chunk rows: the gate cumsum and the segment ids, each twice (as rows of
  a query tile, as columns of a key tile: Mosaic GPU's layout inference takes one SMEM row in one
  layout), those given, then the backward's statistics (lse, delta); None if there are none."""
  rows = [x for x in (gate_BHT, seg_BT) if x is not None for _ in range(2)] + list(stats_BHT)
  return chunk_rows(rows, call.B, call.H, call.Tp, call.C) if rows else None


class _Layout:
  """Where a chunk's rows hold what (`_rows`), and the tile arithmetic on them."""

  def __init__(self, C, gate, seg, qk_scale):
    self.C, self.gate, self.seg, self.qk_scale = C, gate, seg, qk_scale
    self.X = 2 * (gate + seg)          # rows before the statistics

  def side(self, rows, as_rows):
    """(gate, seg) of a chunk (None where absent), broadcast along its tile's rows (a query
    side) or columns (a key side)."""
    if rows is None:
      return None, None
    C = self.C
    take = (lambda x: row(rows, x, C, C)) if as_rows else (lambda x: col(rows, x, C))
    copy = 0 if as_rows else 1
    return (take(copy) if self.gate else None,
            take(2 * self.gate + copy) if self.seg else None)

  def logits(self, s, q_side, k_side):
    """qk_scale (s + G_t - G_s) in log2 units, masked where the segments differ."""
    (gq, sq), (gk, sk) = q_side, k_side
    s = s * self.qk_scale
    if gq is not None:
      s = s + (gq - gk) * self.qk_scale
    return s if sq is None else jnp.where(sq == sk, s, MASKED)

  def diagonal(self, z, rows):
    """Log2 logits of a chunk's own causal tile from its in-chunk logits z."""
    s = self.logits(z, self.side(rows, True), self.side(rows, False))
    return jnp.where(iota(self.C, 0) >= iota(self.C, 1), s, MASKED)

  def stat(self, rows, x, n):
    """The backward's statistic x (0: lse, 1: delta) of a query chunk, along [C, n] rows."""
    return row(rows, self.X + x, self.C, n)


def _sync_load(src, dst, barrier):
  plgpu.copy_gmem_to_smem(src, dst, barrier)
  plgpu.barrier_wait(barrier)


def _times(x, x_smem, pairs, shape):
  """x (float32) rounded into x_smem (the input dtype, as the Triton kernels round it for their
  dots), then the product of `pairs` (which read x_smem)."""
  x_smem[...] = x.astype(x_smem.dtype)
  plgpu.commit_smem()
  return product(pairs, shape)


def _levels(L, run, skip, bit_set, carry):
  """carry through the L levels: run(lv, carry) where bit_set(lv), else skip(lv, carry)."""
  for lv in range(L):
    carry = lax.cond(bit_set(lv), functools.partial(run, lv), functools.partial(skip, lv), carry)
  return carry


def _pipeline(step, n, specs, inputs, carry):
  return plgpu.emit_pipeline(step, grid=(n,), max_concurrent_steps=min(_STAGES, n),
                             in_specs=specs, init_carry=carry)(*inputs)


def _key_chunks(lay, refs, b, h, R, i, lv, q_smem, q_side, barrier, per_tile, carry):
  """Level lv of query chunk i (the forward's and dq's): its query copy into q_smem, then the
  key copies and values of key chunks mid - 1, ..., mid - 2^lv (mid: i with its bits below lv
  cleared) pipelined by TMA with their rows, carry <- per_tile(s, k_smem, kv_smem, carry), s the
  tile's log2 logits. refs: qlv, klv, v, and the rows ([B, H, M X', C], or None)."""
  qlv_ref, klv_ref, v_ref, rows_ref = refs
  C, K, V = lay.C, q_smem.shape[-1], v_ref.shape[-1]
  mid = (i >> lv) << lv
  _sync_load(qlv_ref.at[b, h, lv, pl.ds(i * C, C)], q_smem, barrier)

  def step(_, k_smem, kv_smem, *rest):
    *k_rows, carry = rest
    s = lay.logits(product([(q_smem, k_smem.transpose((1, 0)))], (C, C)), q_side,
                   lay.side(k_rows[0] if k_rows else None, False))
    return per_tile(s, k_smem, kv_smem, carry)

  key = lambda t: (mid - 1 - t, 0)  # noqa: E731
  tiling = transforms(64, jnp.dtype(q_smem.dtype).itemsize)
  specs = [plgpu.BlockSpec((C, K), key, transforms=tiling),
           plgpu.BlockSpec((C, V), key, transforms=tiling)]
  inputs = [klv_ref.at[b, h // R, lv], v_ref.at[b, :, h // R]]
  if lay.X:   # the key side's gate and segment ids
    specs.append(plgpu.BlockSpec((rows_ref.shape[2] // (v_ref.shape[1] // C), C), key))
    inputs.append(rows_ref.at[b, h])
  return _pipeline(step, 1 << lv, specs, inputs, carry)


def _fwd_kernel(qlv_ref, klv_ref, z_ref, v_ref, *refs, M, L, R, lay):
  """One query chunk of one head (module docstring). refs: the rows if any; o, lse; SMEM: the
  query copy, the diagonal z tile, the chunk's values, P, the chunk's rows if any, the lse row;
  a barrier."""
  refs = list(refs)
  rows_ref = refs.pop(0) if lay.X else None
  o_ref, lse_ref, q_smem, z_smem, v_smem, p_smem = refs[:6]
  rows_smem = refs[6] if lay.X else None
  lse_smem, barrier = refs[-2:]
  C, V = lay.C, v_smem.shape[-1]
  h, b, n = (lax.axis_index(a) for a in ('h', 'b', 'n'))
  i = M - 1 - n
  here = pl.ds(i * C, C)
  _sync_load(z_ref.at[b, h, here], z_smem, barrier)
  _sync_load(v_ref.at[b, here, h // R], v_smem, barrier)
  if lay.X:
    _sync_load(rows_ref.at[b, h, pl.ds(i * lay.X, lay.X)], rows_smem, barrier)
  q_side = lay.side(rows_smem, True)
  s = lay.diagonal(plgpu.load(z_smem, layout=TILE), rows_smem)
  m = jnp.max(s, axis=1)
  p = jnp.exp2(s - lax.broadcast_in_dim(m, (C, C), [0]))
  carry = (m, jnp.sum(p, axis=1), _times(p, p_smem, [(p_smem, v_smem)], (C, V)))

  def tile(s, k_smem, kv_smem, carry):
    m, l, o = carry
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s - lax.broadcast_in_dim(m_new, (C, C), [0]))
    return (m_new, alpha * l + jnp.sum(p, axis=1), lax.broadcast_in_dim(alpha, (C, V), [0]) * o
            + _times(p, p_smem, [(p_smem, kv_smem)], (C, V)))

  def level(lv, carry):
    return _key_chunks(lay, (qlv_ref, klv_ref, v_ref, rows_ref), b, h, R, i, lv, q_smem, q_side,
                       barrier, tile, carry)

  m, l, o = _levels(L, level, lambda lv, c: c, lambda lv: ((i >> lv) & 1) == 1, carry)
  o_ref[b, here, h] = (o / lax.broadcast_in_dim(l, (C, V), [0])).astype(o_ref.dtype)
  lse_smem[0] = m + jnp.log(l) * _LN2_INV
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[b, h, pl.ds(i, 1)])
  plgpu.wait_smem_to_gmem(0)


def _dq_kernel(qlv_ref, klv_ref, z_ref, v_ref, do_ref, rows_ref, dqlv_ref, dz_ref, dg_ref,
               q_smem, z_smem, v_smem, do_smem, ds_smem, rows_smem, dg_smem, barrier, *, M, L, R,
               scale, lay):
  """dQ^lv of every level, dz and the gate row sums of one query chunk of one head."""
  C, K = lay.C, q_smem.shape[-1]
  h, b, n = (lax.axis_index(a) for a in ('h', 'b', 'n'))
  i = M - 1 - n
  here = pl.ds(i * C, C)
  for src, dst in ((z_ref.at[b, h, here], z_smem), (v_ref.at[b, here, h // R], v_smem),
                   (do_ref.at[b, here, h], do_smem),
                   (rows_ref.at[b, h, pl.ds(i * (lay.X + 2), lay.X + 2)], rows_smem)):
    _sync_load(src, dst, barrier)
  q_side = lay.side(rows_smem, True)
  lse, delta = lay.stat(rows_smem, 0, C), lay.stat(rows_smem, 1, C)

  def d_logits(s, v_tile):
    """dS = P o (dO v^T - delta), P = exp2(s - lse), of a tile's log2 logits s."""
    dp = product([(do_smem, v_tile.transpose((1, 0)))], (C, C))
    return jnp.exp2(s - lse) * (dp - delta)

  ds = d_logits(lay.diagonal(plgpu.load(z_smem, layout=TILE), rows_smem), v_smem)
  dz_ref[b, h, here] = scale * ds

  def tile(s, k_smem, kv_smem, carry):
    dq, dg = carry
    ds = d_logits(s, kv_smem)
    return dq + _times(ds, ds_smem, [(ds_smem, k_smem)], (C, K)), dg + jnp.sum(ds, axis=1)

  def level(lv, dg):
    dq, dg = _key_chunks(lay, (qlv_ref, klv_ref, v_ref, rows_ref), b, h, R, i, lv, q_smem,
                         q_side, barrier, tile, (zeros((C, K)), dg))
    dqlv_ref[b, h, lv, here] = (scale * dq).astype(dqlv_ref.dtype)
    return dg

  def skip(lv, dg):
    dqlv_ref[b, h, lv, here] = zeros((C, K)).astype(dqlv_ref.dtype)
    return dg

  dg = _levels(L, level, skip, lambda lv: ((i >> lv) & 1) == 1, jnp.sum(ds, axis=1))
  dg_smem[0] = scale * dg
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(dg_smem, dg_ref.at[b, h, pl.ds(i, 1)])
  plgpu.wait_smem_to_gmem(0)


def _dkv_kernel(qlv_ref, klv_ref, z_ref, v_ref, do_ref, rows_ref, dklv_ref, dv_ref, dg_ref,
                k_smem, z_smem, v_smem, do_smem, p_smem, ds_smem, rows_smem, dg_smem, barrier, *,
                M, L, R, scale, lay):
  """dK^lv of every level, dv and the gate column sums of one key chunk, for one query head."""
  C, V = lay.C, v_smem.shape[-1]
  K = k_smem.shape[-1]
  X2 = lay.X + 2
  h, b, j = (lax.axis_index(a) for a in ('h', 'b', 'n'))
  here = pl.ds(j * C, C)
  tiling = transforms(64, jnp.dtype(k_smem.dtype).itemsize)
  for src, dst in ((z_ref.at[b, h, here], z_smem), (v_ref.at[b, here, h // R], v_smem),
                   (do_ref.at[b, here, h], do_smem),
                   (rows_ref.at[b, h, pl.ds(j * X2, X2)], rows_smem)):
    _sync_load(src, dst, barrier)
  k_side = lay.side(rows_smem, False)

  def grads(s, q_rows, do_tile):
    """(P, dS) of a tile's log2 logits s from its query chunk's statistics and dO."""
    p = jnp.exp2(s - lay.stat(q_rows, 0, C))
    dp = product([(do_tile, v_smem.transpose((1, 0)))], (C, C))
    return p, p * (dp - lay.stat(q_rows, 1, C))

  p, ds = grads(lay.diagonal(plgpu.load(z_smem, layout=TILE), rows_smem), rows_smem, do_smem)
  carry = (_times(p, p_smem, [(p_smem.transpose((1, 0)), do_smem)], (C, V)),
           jnp.sum(ds, axis=0))

  def level(lv, carry):
    start = ((j >> lv) + 1) << lv
    _sync_load(klv_ref.at[b, h // R, lv, here], k_smem, barrier)

    def step(idx, q_smem, qdo_smem, q_rows, carry):
      dk, dv, dg = carry
      s = lay.logits(product([(q_smem, k_smem.transpose((1, 0)))], (C, C)),
                     lay.side(q_rows, True), k_side)
      p, ds = grads(s, q_rows, qdo_smem)
      valid = (start + idx[0] < M).astype(f32)    # steps past the last chunk add nothing
      p, ds = p * valid, ds * valid
      dv = dv + _times(p, p_smem, [(p_smem.transpose((1, 0)), qdo_smem)], (C, V))
      dk = dk + _times(ds, ds_smem, [(ds_smem.transpose((1, 0)), q_smem)], (C, K))
      return dk, dv, dg + jnp.sum(ds, axis=0)

    query = lambda t: (jnp.minimum(start + t, M - 1), 0)  # noqa: E731
    specs = [plgpu.BlockSpec((C, K), query, transforms=tiling),
             plgpu.BlockSpec((C, V), query, transforms=tiling),
             plgpu.BlockSpec((X2, C), query)]
    inputs = [qlv_ref.at[b, h, lv], do_ref.at[b, :, h], rows_ref.at[b, h]]
    dk, dv, dg = _pipeline(step, 1 << lv, specs, inputs, (zeros((C, K)),) + carry)
    dklv_ref[b, h, lv, here] = scale * dk
    return dv, dg

  def skip(lv, carry):
    dklv_ref[b, h, lv, here] = zeros((C, K))
    return carry

  bit_clear = lambda lv: (((j >> lv) & 1) == 0) & ((((j >> lv) + 1) << lv) < M)  # noqa: E731
  dv, dg = _levels(L, level, skip, bit_clear, carry)
  dv_ref[b, here, h] = dv
  dg_smem[0] = -scale * dg
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(dg_smem, dg_ref.at[b, h, pl.ds(j, 1)])
  plgpu.wait_smem_to_gmem(0)


def _launch(kernel, name, call, dtype, out_type, scratch, args, **params):
  tiling = transforms(64, jnp.dtype(dtype).itemsize)
  smem = [plgpu.SMEM(shape, dt, transforms=tiling if dt != f32 else ())
          for shape, dt in scratch]
  return plgpu.kernel(
      functools.partial(kernel, M=call.M, R=call.H // call.G, **params), out_type=out_type,
      scratch_types=smem + [plgpu.SMEM((1, call.C), f32), plgpu.Barrier(num_barriers=1)],
      grid=(call.H, call.B, call.M), grid_names=('h', 'b', 'n'),
      interpret=interpret_params(call.interpret), kernel_name=name)(*args)


def _layout(call, gate_BHT, seg_BT):
  return _Layout(call.C, gate_BHT is not None, seg_BT is not None, call.scale * _LN2_INV)


def forward(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, call):
  """kernel.py's forward kernel on Mosaic GPU: o_BTHV (v's dtype) and the float32 log2-sum-exp
  lse_BHT, as `_attend_fwd` returns them."""
  dt = qlv_BHLTK.dtype
  check(call, dt, klv_BGLTK.dtype, v_BTGV.dtype)
  B, H, L, Tp, K = qlv_BHLTK.shape
  C, V = call.C, call.V
  lay = _layout(call, gate_BHT, seg_BT)
  rows = _rows(call, gate_BHT, seg_BT)
  sds = jax.ShapeDtypeStruct
  o, lse = _launch(
      _fwd_kernel, 'path_attention_fwd_mgpu', call, dt,
      [sds((B, Tp, H, V), v_BTGV.dtype), sds((B, H, call.M, C), f32)],
      [((C, K), dt), ((C, C), f32), ((C, V), dt), ((C, C), dt)]
      + ([((lay.X, C), f32)] if lay.X else []),
      (qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV) + ((rows,) if lay.X else ()), L=L, lay=lay)
  return o, lse.reshape(B, H, Tp)


def backward(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, do_BTHV, lse_BHT,
             delta_BHT, call):
  """kernel.py's dq and dkv kernels on Mosaic GPU: dqlv_BHLTK (q's dtype), float32 dz_BHTC and
  the gate row sums dgq_BHT; float32 dklv_BHLTK (per query head), dv_BTHV and the gate column
  sums dgk_BHT."""
  dt = qlv_BHLTK.dtype
  check(call, dt, klv_BGLTK.dtype, v_BTGV.dtype)
  B, H, L, Tp, K = qlv_BHLTK.shape
  C, V = call.C, call.V
  lay = _layout(call, gate_BHT, seg_BT)
  sds = jax.ShapeDtypeStruct
  args = (qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, do_BTHV,
          _rows(call, gate_BHT, seg_BT, lse_BHT, delta_BHT))
  # the chunk's copy (q or k), z, v, dO and one [C, C] operand tile; dkv takes a second
  tiles = [((C, K), dt), ((C, C), f32), ((C, V), dt), ((C, V), dt), ((C, C), dt)]
  rows = [((lay.X + 2, C), f32)]
  rows_out = sds((B, H, call.M, C), f32)
  dqlv, dz, dgq = _launch(
      _dq_kernel, 'path_attention_bwd_dq_mgpu', call, dt,
      [sds(qlv_BHLTK.shape, dt), sds(z_BHTC.shape, f32), rows_out], tiles + rows, args, L=L,
      scale=call.scale, lay=lay)
  dklv, dv, dgk = _launch(
      _dkv_kernel, 'path_attention_bwd_dkv_mgpu', call, dt,
      [sds((B, H, L, Tp, K), f32), sds((B, Tp, H, V), f32), rows_out],
      tiles + [((C, C), dt)] + rows, args, L=L, scale=call.scale, lay=lay)
  return dqlv, dz, dgq.reshape(B, H, Tp), dklv, dv, dgk.reshape(B, H, Tp)
