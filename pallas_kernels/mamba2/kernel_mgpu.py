"""kernel.level_scan, the chunk scan behind every pass of log-linear Mamba-2 and Mamba-2 SSD, as a
Mosaic GPU kernel (`plgpu.kernel`), off the deprecated Pallas-Triton lowering. It serves rows
whose positions are aligned with the hierarchy (no packed documents: those stay on the Triton
kernel's packed mode). KernelConfig(backend='mosaic') selects it; 'auto' keeps the Triton kernel
until the two have been timed against each other on a GPU.

Same inputs, outputs and sums as kernel.level_scan (its docstring states the scan). Grid
(B, H, Vc / BV), one warpgroup per block, the chunks in order (backward in time when reverse):
- A chunk's a, b [C, Ka] and c [C, BV] tiles (and qx [C, BV] for dlam) stream GMEM -> SMEM by
  TMA (`plgpu.emit_pipeline`, two chunks in flight) with one [X, C] block of float32 rows made in
  XLA before the kernel (`_rows`): the in-chunk cumsum G (twice: rows and columns of the pair
  decay), the read and write weights, the chunk decay e^{G_C}, and lam's levels.
- Pairs inside the chunk: a b^T is one WGMMA (b read transposed in place); the decay, the causal
  mask and the level weights lam^(lvl(t, s)) are applied in registers; the result, rounded to the
  input dtype in SMEM (the Triton kernel rounds it for its dot too), times c is a second WGMMA.
  dlam's levels inside a chunk: (qx c^T) o the decayed a b^T, masked per level, summed along rows.
- Pairs across chunks: the float32 [Ka, BV] state of each level stream stays in registers across
  chunks (the pipeline's carry, in the WGMMA layout). A read is a @ S, S written to SMEM in the
  input dtype (as hi + lo halves with precise_states: two WGMMAs, as the Triton kernel's
  `_dot_state`); a write adds b^T (w o c) (one product shared by every stream in the causal scan,
  one per stream in the anti-causal one, whose write weights carry lam). Reads and writes a chunk
  skips are lax.conds, as in the Triton kernel.
Limits: 16-bit inputs (WGMMA reads transposed SMEM operands in 16-bit types only), C and Ka
multiples of 64 (the M dimension of a b^T and b^T c), BV a multiple of 16 (the SMEM swizzle, as
in gdn.chunkwise_mgpu). The states take (streams x Ka x BV) / 128 registers per thread: BV is
halved (down to 16) to keep them within `_STATE_REGISTERS`, and until the tiles fit in SMEM.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.linear_recurrence import level_masks
from pallas_kernels.mgpu import (SMEM_BYTES, TILE, chunk_rows, col, f32, interpret_params, iota,
                                 product, row, transforms, zeros)

__all__ = ['check', 'level_scan']

_STAGES = 2                 # chunks in flight in the pipeline
_STATE_REGISTERS = 128      # float32 registers per thread the carried states may take
# rows of a chunk's [X, C] block; lam's level l is row _LAM + l
_G_ROW, _G_COL, _READ, _WRITE, _DECAY, _LAM = range(6)


def _streams(C, P, levels):
  """(intra_levels, streams, lam_levels) of an aligned scan, as kernel.level_scan computes them."""
  if levels is None:
    return 1, (None,), 0
  lo = C.bit_length()
  hi = min(levels, (P - 1).bit_length() + 1)
  return min(lo, hi), tuple(range(lo, hi)), hi


def _smem_bytes(C, Ka, BV, X, lam_levels, with_dlam, itemsize):
  """The pipeline's input slots (a, b, c, qx tiles and the rows), the A operand of the intra
  product, the state and write operands (hi, lo) and dlam's output rows."""
  tiles = _STAGES * (2 * C * Ka + C * BV * (1 + with_dlam)) + C * C + 2 * Ka * BV + 2 * C * BV
  return tiles * itemsize + 4 * (_STAGES * X * C + (lam_levels * C if with_dlam else 0))


def _block_v(block_v, Vc, C, Ka, P, levels, with_dlam, itemsize):
  """block_v (<= Vc) halved, down to 16, until the states fit `_STATE_REGISTERS` and the tiles
  fit in SMEM; None when even 16 does not fit in SMEM."""
  _, streams, lam_levels = _streams(C, P, levels)
  fits = lambda BV: _smem_bytes(C, Ka, BV, _LAM + lam_levels, lam_levels, with_dlam,  # noqa: E731
                                itemsize) <= SMEM_BYTES
  BV = min(block_v, Vc)
  while BV > 16 and (len(streams) * Ka * BV // 128 > _STATE_REGISTERS or not fits(BV)):
    BV //= 2
  return BV if fits(BV) else None


def check(a_BPXA, b_BPXA, c_BPXV, *, chunk_size, block_v, levels, with_dlam=False):
  """ValueError naming the first field of a launch the Mosaic kernel cannot serve."""
  P, Ka, Vc = a_BPXA.shape[1], a_BPXA.shape[-1], c_BPXV.shape[-1]
  dtype = jnp.result_type(a_BPXA.dtype, b_BPXA.dtype, c_BPXV.dtype)
  problems = [('dtype', jnp.dtype(dtype).name, jnp.dtype(dtype).itemsize == 2,
               'bfloat16 or float16'),
              ('chunk_size', chunk_size, chunk_size % 64 == 0, 'a multiple of 64'),
              ('feature width of a / b', Ka, Ka % 64 == 0, 'a multiple of 64'),
              ('block_v', min(block_v, Vc), min(block_v, Vc) % 16 == 0, 'a multiple of 16')]
  for name, value, ok, expected in problems:
    if not ok:
      raise ValueError(f"Mamba-2 level scan (backend='mosaic'): {name}={value!r}; expected "
                       f"{expected}")
  if _block_v(block_v, Vc, chunk_size, Ka, P, levels, with_dlam, 2) is None:
    raise ValueError(f"Mamba-2 level scan (backend='mosaic'): chunk_size={chunk_size} with a "
                     f"feature width of {Ka} does not fit in SMEM at block_v 16 "
                     f"(expected chunks of 64)")


def _rows(g_BHP, lam_BHLP, C, lam_levels, reverse):
  """[B, H, N X, C]: a chunk's rows (the module docstring; causal: read weight e^G, write weight
  e^{G_C - G}; anti-causal: the other way round)."""
  B, H, P = g_BHP.shape
  G_BHNC = jnp.cumsum(g_BHP.astype(f32).reshape(B, H, P // C, C), axis=-1)
  gs_BHN1 = G_BHNC[..., -1:]
  to_start, to_end = jnp.exp(G_BHNC), jnp.exp(gs_BHN1 - G_BHNC)
  read, write = (to_end, to_start) if reverse else (to_start, to_end)
  flat = lambda x: jnp.broadcast_to(x, G_BHNC.shape).reshape(B, H, P)  # noqa: E731
  rows = [flat(x) for x in (G_BHNC, G_BHNC, read, write, jnp.exp(gs_BHN1))]
  rows += [lam_BHLP[:, :, l] for l in range(lam_levels)]
  return chunk_rows(rows, B, H, P, C)


def _kernel(*refs, C, N, Ka, BV, ratios, intra_levels, streams, lam_levels, reverse, with_dlam,
            precise):
  """One (b, h, block of c's features) of the scan (module docstring). refs: a, b, c, the rows,
  qx if with_dlam; o, dlam if with_dlam; SMEM scratch: the intra product's A operand, the state
  and write operands (hi, lo), dlam's rows if with_dlam."""
  refs = list(refs)
  a_ref, b_ref, c_ref, rows_ref = refs[:4]
  qx_ref = refs[4] if with_dlam else None
  refs = refs[4 + with_dlam:]
  o_ref = refs.pop(0)
  dlam_ref = refs.pop(0) if with_dlam else None
  p_smem, s_smem, w_smem = refs[:3]
  dl_smem = refs[3] if with_dlam else None
  bi, h, j = (lax.axis_index(n) for n in ('b', 'h', 'j'))
  cols = pl.ds(j * BV, BV)
  dt = a_ref.dtype
  lo = C.bit_length()

  def halves(x, slots):
    """x (float32) into the SMEM operand slots: rounded to dt, and its remainder if precise."""
    hi = x.astype(dt)
    slots.at[0][...] = hi
    if precise:
      slots.at[1][...] = (x - hi.astype(f32)).astype(dt)
    plgpu.commit_smem()
    return [slots.at[0]] + ([slots.at[1]] if precise else [])

  def step(idx, a_smem, b_smem, c_smem, *rest):
    *qx, rows_smem, states = rest
    i = idx[0]
    c = N - 1 - i if reverse else i
    # pairs inside the chunk
    r, s = iota(C, 0), iota(C, 1)
    pair = (s >= r) if reverse else (r >= s)
    G_r, G_c = row(rows_smem, _G_ROW, C, C), col(rows_smem, _G_COL, C)
    expo = jnp.where(pair, (G_c - G_r) if reverse else (G_r - G_c), -jnp.inf)
    pd = product([(a_smem, b_smem.transpose((1, 0)))], (C, C)) * jnp.exp(expo)
    p, masks = pd, []
    if lam_levels:
      masks = level_masks(r ^ s, intra_levels)
      lam = [col(rows_smem, _LAM + l, C) if reverse else row(rows_smem, _LAM + l, C, C)
             for l in range(intra_levels)]
      weights = sum(jnp.where(m, w, 0.0) for m, w in zip(masks, lam))
      p = pd * weights
    p_smem[...] = p.astype(dt)
    plgpu.commit_smem()
    out = product([(p_smem, c_smem)], (C, BV))
    dlam = {}
    if with_dlam:
      (qx_smem,) = qx
      z = pd * product([(qx_smem, c_smem.transpose((1, 0)))], (C, C))
      dlam = {l: jnp.sum(jnp.where(m, z, 0.0), axis=1) for l, m in enumerate(masks)}
      qxv = plgpu.load(qx_smem, layout=TILE).astype(f32)

    # pairs across chunks: one state per stream
    cv = plgpu.load(c_smem, layout=TILE).astype(f32)
    read_w, write_w = row(rows_smem, _READ, C, BV), row(rows_smem, _WRITE, C, BV)
    decay = rows_smem[_DECAY, 0]
    lam_rows = lambda lv: row(rows_smem, _LAM + lv, C, BV)  # noqa: E731
    write = lambda y: product([(b_smem.transpose((1, 0)), x)  # noqa: E731
                               for x in halves(y, w_smem)], (Ka, BV))
    shared = None if reverse else write(cv * write_w)
    new_states = []
    for S, lv in zip(states, streams):
      if lv is None:                           # hierarchy off: read and write every chunk
        reads, writes, keep = None, None, decay
      else:
        x = lv - lo
        bit = ((c >> x) & 1) == 1
        block = (1 << (x + 1)) - 1
        reads, writes = (~bit, bit) if reverse else (bit, ~bit)
        keep = jnp.where((c & block) == (block if reverse else 0), 0.0, decay)

      def do_read(S=S, lv=lv):
        rd = read_w * product([(a_smem, x) for x in halves(S, s_smem)], (C, BV))
        dl = jnp.sum(qxv * rd, axis=1) if with_dlam else zeros((C,))
        return (rd if reverse or lv is None else rd * lam_rows(lv)), dl

      rd, dl = do_read() if reads is None else lax.cond(
          reads, do_read, lambda: (zeros((C, BV)), zeros((C,))))
      out = out + rd
      if with_dlam and lv is not None:
        dlam[lv] = dl
      if shared is not None:                   # causal: the one write product, where it writes
        new_states.append(S * keep + (shared if writes is None else
                                      shared * writes.astype(f32)))
      elif writes is None:
        new_states.append(S * keep + write(cv * write_w))
      else:
        new_states.append(lax.cond(
            writes, lambda S=S, keep=keep, lv=lv: S * keep + write(cv * write_w * lam_rows(lv)),
            lambda S=S, keep=keep: S * keep))
    o_ref[bi, pl.ds(c * C, C), h, cols] = out.astype(o_ref.dtype)
    if with_dlam:
      plgpu.wait_smem_to_gmem(0)               # the last chunk's dlam rows have left
      for l in range(lam_levels):
        dl_smem[l] = dlam[l]
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(dl_smem, dlam_ref.at[j, bi, h, :, pl.ds(c * C, C)])
    return tuple(new_states)

  tiling = transforms(BV, jnp.dtype(dt).itemsize)
  index = (lambda i: (N - 1 - i, 0)) if reverse else (lambda i: (i, 0))
  ra, rb, rc = ratios[:3]
  inputs = [a_ref.at[bi, :, h // ra, :], b_ref.at[bi, :, h // rb, :],
            c_ref.at[bi, :, h // rc, cols]]
  specs = [plgpu.BlockSpec((C, Ka), index, transforms=tiling)] * 2 + [
      plgpu.BlockSpec((C, BV), index, transforms=tiling)]
  if with_dlam:
    inputs.append(qx_ref.at[bi, :, h // ratios[3], cols])
    specs.append(plgpu.BlockSpec((C, BV), index, transforms=tiling))
  inputs.append(rows_ref.at[bi, h])
  specs.append(plgpu.BlockSpec((_LAM + lam_levels, C), index))
  pipeline = plgpu.emit_pipeline(step, grid=(N,), max_concurrent_steps=min(_STAGES, N),
                                 in_specs=specs,
                                 init_carry=tuple(zeros((Ka, BV)) for _ in streams))
  pipeline(*inputs)
  if with_dlam:
    plgpu.wait_smem_to_gmem(0)


def level_scan(a_BPXA, b_BPXA, c_BPXV, g_BHP, lam_BHLP=None, qx_BPXV=None, pos_BP=None,
               doc_BP=None, *, heads, chunk_size, reverse, levels=None, out_dtype=jnp.float32,
               block_v=32, precise_states=False, interpret=False):
  """kernel.level_scan on Mosaic GPU for aligned positions: the same arguments less the Triton
  launch ones, the same outputs: out_BPHV [, dlam_JBHLP]. `check` names what it cannot serve;
  packed documents (pos_BP / doc_BP) have no Mosaic form."""
  if pos_BP is not None or doc_BP is not None:
    raise ValueError("Mamba-2 level scan (backend='mosaic'): packed documents (pos_BP / doc_BP) "
                     "run on the Triton kernel (kernel.level_scan)")
  with_dlam = qx_BPXV is not None
  check(a_BPXA, b_BPXA, c_BPXV, chunk_size=chunk_size, block_v=block_v, levels=levels,
        with_dlam=with_dlam)
  B, P, _, Ka = a_BPXA.shape
  Vc = c_BPXV.shape[-1]
  C, H, N = chunk_size, heads, P // chunk_size
  dt = jnp.result_type(a_BPXA.dtype, b_BPXA.dtype, c_BPXV.dtype)
  BV = _block_v(block_v, Vc, C, Ka, P, levels, with_dlam, jnp.dtype(dt).itemsize)
  J = Vc // BV
  intra_levels, streams, lam_levels = _streams(C, P, levels)
  operands = [a_BPXA, b_BPXA, c_BPXV] + ([qx_BPXV] if with_dlam else [])
  sds = jax.ShapeDtypeStruct
  out_type = [sds((B, P, H, Vc), out_dtype)] + (
      [sds((J, B, H, lam_levels, P), f32)] if with_dlam else [])
  tiling = transforms(BV, jnp.dtype(dt).itemsize)
  scratch = [plgpu.SMEM((C, C), dt, transforms=tiling),
             plgpu.SMEM((2, Ka, BV), dt, transforms=tiling),
             plgpu.SMEM((2, C, BV), dt, transforms=tiling)] + (
                 [plgpu.SMEM((lam_levels, C), f32)] if with_dlam else [])
  kernel = plgpu.kernel(
      functools.partial(_kernel, C=C, N=N, Ka=Ka, BV=BV,
                        ratios=tuple(H // x.shape[2] for x in operands),
                        intra_levels=intra_levels, streams=streams, lam_levels=lam_levels,
                        reverse=reverse, with_dlam=with_dlam, precise=precise_states),
      out_type=out_type, scratch_types=scratch, grid=(B, H, J), grid_names=('b', 'h', 'j'),
      interpret=interpret_params(interpret),
      kernel_name='loglinear_level_scan_mgpu_' + ('rev' if reverse else 'fwd'))
  rows = _rows(g_BHP, lam_BHLP, C, lam_levels, reverse)
  args = [a_BPXA.astype(dt), b_BPXA.astype(dt), c_BPXV.astype(dt), rows] + (
      [qx_BPXV.astype(dt)] if with_dlam else [])
  outs = kernel(*args)
  return tuple(outs) if with_dlam else outs[0]
