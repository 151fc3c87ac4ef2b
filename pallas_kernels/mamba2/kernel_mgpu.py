"""kernel.level_scan, the chunk scan behind every pass of log-linear Mamba-2 and Mamba-2 SSD, as a
Mosaic GPU kernel (`plgpu.kernel`), off the deprecated Pallas-Triton lowering, in both of its
modes (rows aligned with the hierarchy, and packed documents). KernelConfig(backend='mosaic')
selects it; 'auto' keeps the Triton kernel until the two have been timed against each other on a
GPU.

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
- Packed documents (pos / doc per token): what the Triton kernel computes per token in the kernel
  comes in as rows made in XLA: positions, document ids and real flags (as rows and as columns:
  the pair mask and the levels bit_length(pos_t XOR pos_s)), and per stream its read and write
  weights with the reset masks folded in, the chunk's keep factor and whether any token reads or
  writes (`_stream_rows`). Levels 1 .. log2 C reach the neighbouring chunk (the previous one, the
  next anti-causal): its b and c tiles stream in beside the chunk's, with its rows shifted by one
  chunk in XLA (`_rows`), for one more masked block.
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
# rows of a chunk's [X, C] block: lam's level l is row _LAM + l; then, if packed, the pair
# masks (`_PAIR_ROWS` from row _LAM + lam levels) and three rows per stream (`_stream_rows`)
_G_ROW, _G_COL, _READ, _WRITE, _DECAY, _LAM = range(6)
_POS_R, _POS_C, _DOC_R, _DOC_C, _REAL_R, _REAL_C = range(6)       # offsets of the pair masks
_PAIR_ROWS = 6
# rows of the neighbouring chunk's block (packed): its G, positions, documents, real flags as
# columns, then lam's levels below log2 C + 1 (anti-causal only, as columns)
_N_G, _N_POS, _N_DOC, _N_REAL, _N_LAM = range(5)


def _streams(C, P, levels, packed=False, all_levels=False):
  """(intra_levels, streams, lam_levels) of a scan, as kernel.level_scan computes them."""
  if levels is None:
    return 1, (None,), 0
  lo = C.bit_length()
  hi = levels if all_levels else min(levels, (P - 1).bit_length() + 1)
  return (hi if packed else min(lo, hi)), tuple(range(lo, hi)), hi


def _n_rows(lam_levels, n_streams, packed):
  return _LAM + lam_levels + (_PAIR_ROWS + 3 * n_streams if packed else 0)


def _smem_bytes(C, Ka, BV, X, Xn, lam_levels, with_dlam, packed, itemsize):
  """The pipeline's input slots (a, b, c, qx tiles, the rows; packed: the neighbouring chunk's b,
  c and rows too), the A operand of the intra product, the state and write operands (hi, lo) and
  dlam's output rows."""
  tiles = _STAGES * (2 * C * Ka + C * BV * (1 + with_dlam) + packed * (C * Ka + C * BV)) + (
      C * C + 2 * Ka * BV + 2 * C * BV)
  return tiles * itemsize + 4 * (_STAGES * (X + Xn) * C + (lam_levels * C if with_dlam else 0))


def _block_v(block_v, Vc, C, Ka, P, levels, with_dlam, itemsize, packed=False, all_levels=False):
  """block_v (<= Vc) halved, down to 16, until the states fit `_STATE_REGISTERS` and the tiles
  fit in SMEM; None when even 16 does not fit in SMEM."""
  _, streams, lam_levels = _streams(C, P, levels, packed, all_levels)
  X = _n_rows(lam_levels, len(streams), packed)
  Xn = (_N_LAM + min(C.bit_length(), lam_levels)) if packed else 0
  fits = lambda BV: _smem_bytes(C, Ka, BV, X, Xn, lam_levels, with_dlam, packed,  # noqa: E731
                                itemsize) <= SMEM_BYTES
  BV = min(block_v, Vc)
  while BV > 16 and (len(streams) * Ka * BV // 128 > _STATE_REGISTERS or not fits(BV)):
    BV //= 2
  return BV if fits(BV) else None


def check(a_BPXA, b_BPXA, c_BPXV, *, chunk_size, block_v, levels, with_dlam=False, packed=False,
          all_levels=False):
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
  if _block_v(block_v, Vc, chunk_size, Ka, P, levels, with_dlam, 2, packed, all_levels) is None:
    raise ValueError(f"Mamba-2 level scan (backend='mosaic'): chunk_size={chunk_size} with a "
                     f"feature width of {Ka} does not fit in SMEM at block_v 16 "
                     f"(expected chunks of 64)")


def _chunk_gates(g_BHP, C):
  """(G, e^G, e^{G_C - G}, e^{G_C}) per token, [B, H, P] float32 (G the in-chunk cumsum)."""
  B, H, P = g_BHP.shape
  G = jnp.cumsum(g_BHP.astype(f32).reshape(B, H, P // C, C), axis=-1)
  gs = G[..., -1:]
  flat = lambda x: jnp.broadcast_to(x, G.shape).reshape(B, H, P)  # noqa: E731
  return flat(G), flat(jnp.exp(G)), flat(jnp.exp(gs - G)), flat(jnp.exp(gs))


def _stream_rows(G_BHP, e_BHP, to_end_BHP, decay_BHP, lam_BHLP, pos_BP, C, lv, reverse):
  """A stream's three rows per chunk in packed mode, kernel.level_scan's per-token stream masks
  computed before the kernel: the read weight (rmask o e^G, or e^{G_C - G} anti-causal), the
  write weight (wmask o e^{G_C - G}, or e^G lam anti-causal), and a row starting with the
  chunk's keep factor (e^{G_C} without a reset in the chunk, else 0), whether any token reads and
  whether any writes."""
  B, H, P = G_BHP.shape
  N = P // C
  real = pos_BP >= 0
  if lv is None:                               # plain SSD: resets at document starts only
    reset, rd, wr = real & (pos_BP == 0), real, real
  else:
    bit = ((pos_BP >> (lv - 1)) & 1) == 1
    reset, rd, wr = real & ((pos_BP & ((1 << lv) - 1)) == 0), real & bit, real & ~bit
  chunks = lambda x: x.reshape(B, N, C)  # noqa: E731
  rc = jnp.cumsum(chunks(reset).astype(jnp.int32), axis=-1)
  rtot = rc[..., -1:]
  if reverse:    # s-side reads pairs with no reset after s; t-side writes with none up to t
    rmask, wmask = chunks(wr) & (rc == rtot), chunks(rd) & (rc == 0)
    rw, ww = to_end_BHP, e_BHP * (1.0 if lv is None else lam_BHLP[:, :, lv])
  else:
    rmask, wmask = chunks(rd) & (rc == 0), chunks(wr) & (rc == rtot)
    rw, ww = e_BHP, to_end_BHP
  per_token = lambda m: jnp.broadcast_to(m.reshape(B, 1, P), (B, H, P))  # noqa: E731
  per_chunk = lambda x: jnp.broadcast_to(x.reshape(B, 1, N), (B, H, N))  # noqa: E731
  info = jnp.zeros((B, H, N, C), f32)
  info = info.at[..., 0].set(jnp.where(per_chunk(rtot) == 0,
                                       decay_BHP.reshape(B, H, N, C)[..., 0], 0.0))
  info = info.at[..., 1].set(per_chunk(jnp.any(rmask, axis=-1)).astype(f32))
  info = info.at[..., 2].set(per_chunk(jnp.any(wmask, axis=-1)).astype(f32))
  info = info.reshape(B, H, P)
  return [jnp.where(per_token(rmask), rw, 0.0), jnp.where(per_token(wmask), ww, 0.0), info]


def _rows(g_BHP, lam_BHLP, pos_BP, doc_BP, C, lam_levels, streams, reverse):
  """[B, H, N X, C]: a chunk's rows (the module docstring and the row constants above; causal:
  read weight e^G, write weight e^{G_C - G}; anti-causal: the other way round), and, packed, the
  neighbouring chunk's rows [B, H, N Xn, C] as the neighbour of chunk n (the previous chunk, or
  the next one anti-causal; with no real token where there is none) or None."""
  B, H, P = g_BHP.shape
  G, e, to_end, decay = _chunk_gates(g_BHP, C)
  read, write = (to_end, e) if reverse else (e, to_end)
  rows = [G, G, read, write, decay] + [lam_BHLP[:, :, l] for l in range(lam_levels)]
  if pos_BP is None:
    return chunk_rows(rows, B, H, P, C), None
  rows += [pos_BP, pos_BP, doc_BP, doc_BP, pos_BP >= 0, pos_BP >= 0]
  for lv in streams:
    rows += _stream_rows(G, e, to_end, decay, lam_BHLP, pos_BP, C, lv, reverse)
  near = [G, pos_BP, doc_BP, pos_BP >= 0] + (
      [lam_BHLP[:, :, l] for l in range(min(C.bit_length(), lam_levels))] if reverse else [])
  near = chunk_rows(near, B, H, P, C)
  X = near.shape[2] // (P // C)
  missing = near[:, :, :X].at[:, :, _N_REAL].set(0.0)          # no real token, no pair
  near = (jnp.concatenate([near[:, :, X:], missing], axis=2) if reverse
          else jnp.concatenate([missing, near[:, :, :-X]], axis=2))
  return chunk_rows(rows, B, H, P, C), near


def _kernel(*refs, C, N, Ka, BV, ratios, intra_levels, streams, lam_levels, reverse, packed,
            with_dlam, precise):
  """One (b, h, block of c's features) of the scan (module docstring). refs: a, b, c, qx if
  with_dlam, the rows, and if packed the neighbouring chunk's b, c and rows; o, dlam if
  with_dlam; SMEM scratch: the intra products' A operand, the state and write operands (hi, lo),
  dlam's rows if with_dlam."""
  refs = list(refs)
  take = lambda n: [refs.pop(0) for _ in range(n)]  # noqa: E731
  a_ref, b_ref, c_ref = take(3)
  qx_ref = take(1)[0] if with_dlam else None
  (rows_ref,) = take(1)
  near_refs = take(3) if packed else []
  (o_ref,) = take(1)
  dlam_ref = take(1)[0] if with_dlam else None
  p_smem, s_smem, w_smem = take(3)
  dl_smem = take(1)[0] if with_dlam else None
  bi, h, j = (lax.axis_index(n) for n in ('b', 'h', 'j'))
  cols = pl.ds(j * BV, BV)
  dt = a_ref.dtype
  lo = C.bit_length()
  near = min(lo, lam_levels)                   # packed: levels 1 .. near - 1 reach a neighbour
  pairs0 = _LAM + lam_levels                   # packed: the pair masks' first row
  T_ = lambda x: x.transpose((1, 0))  # noqa: E731

  def halves(x, slots):
    """x (float32) into the SMEM operand slots: rounded to dt, and its remainder if precise."""
    hi = x.astype(dt)
    slots.at[0][...] = hi
    if precise:
      slots.at[1][...] = (x - hi.astype(f32)).astype(dt)
    plgpu.commit_smem()
    return [slots.at[0]] + ([slots.at[1]] if precise else [])

  def weighted(pd, masks, lam_of):
    """pd o (sum over levels l of masks[l] o lam_of(l)), masks[0] standing for level 0."""
    return pd * sum(jnp.where(m, lam_of(l), 0.0) for l, m in masks.items())

  def attend(p, c_tile):
    """p (float32 [C, C]) rounded into SMEM, times the c tile."""
    p_smem[...] = p.astype(dt)
    plgpu.commit_smem()
    return product([(p_smem, c_tile)], (C, BV))

  def step(idx, a_smem, b_smem, c_smem, *rest):
    rest = list(rest)
    states = rest.pop()
    qx_smem = rest.pop(0) if with_dlam else None
    rows_smem = rest.pop(0)
    i = idx[0]
    c = N - 1 - i if reverse else i
    lam_intra = ((lambda l: col(rows_smem, _LAM + l, C)) if reverse else
                 (lambda l: row(rows_smem, _LAM + l, C, C)))
    # pairs inside the chunk
    r, s = iota(C, 0), iota(C, 1)
    pair = (s >= r) if reverse else (r >= s)
    if packed:
      irow = lambda x: row(rows_smem, pairs0 + x, C, C)  # noqa: E731
      icol = lambda x: col(rows_smem, pairs0 + x, C)  # noqa: E731
      pair = pair & (irow(_DOC_R) == icol(_DOC_C)) & (irow(_REAL_R) > 0) & (icol(_REAL_C) > 0)
      x_pos = irow(_POS_R).astype(jnp.int32) ^ icol(_POS_C).astype(jnp.int32)
    else:
      x_pos = r ^ s
    G_r, G_c = row(rows_smem, _G_ROW, C, C), col(rows_smem, _G_COL, C)
    expo = jnp.where(pair, (G_c - G_r) if reverse else (G_r - G_c), -jnp.inf)
    pd = product([(a_smem, T_(b_smem))], (C, C)) * jnp.exp(expo)
    masks = dict(enumerate(level_masks(x_pos, intra_levels))) if lam_levels else {}
    out = attend(weighted(pd, masks, lam_intra) if lam_levels else pd, c_smem)
    dlam = {}
    if with_dlam:
      z = pd * product([(qx_smem, T_(c_smem))], (C, C))
      dlam = {l: jnp.sum(jnp.where(m, z, 0.0), axis=1) for l, m in masks.items()}
      qxv = plgpu.load(qx_smem, layout=TILE).astype(f32)

    if packed and near > 1:
      # levels 1 .. log2 C span less than C positions, so across chunks they pair only with the
      # neighbouring chunk (the previous one, the next one anti-causal): one more masked block
      bn_smem, cn_smem, near_smem = rest
      ncol = lambda x: col(near_smem, x, C)  # noqa: E731
      npair = (irow(_DOC_R) == ncol(_N_DOC)) & (irow(_REAL_R) > 0) & (ncol(_N_REAL) > 0)
      if reverse:    # s here, t after: exp(Gn_t + G_C - G_s)
        nexpo = ncol(_N_G) + rows_smem[_G_ROW, C - 1] - G_r
      else:          # t here, s before: exp(G_t + Gn_C - Gn_s)
        nexpo = G_r + near_smem[_N_G, C - 1] - ncol(_N_G)
      pn = product([(a_smem, T_(bn_smem))], (C, C)) * jnp.exp(jnp.where(npair, nexpo, -jnp.inf))
      xn = irow(_POS_R).astype(jnp.int32) ^ ncol(_N_POS).astype(jnp.int32)
      nmasks = dict(list(enumerate(level_masks(xn, near)))[1:])
      lam_near = (lambda l: ncol(_N_LAM + l)) if reverse else lam_intra
      out = out + attend(weighted(pn, nmasks, lam_near), cn_smem)
      if with_dlam:
        zn = pn * product([(qx_smem, T_(cn_smem))], (C, C))
        for l, m in nmasks.items():
          dlam[l] = dlam[l] + jnp.sum(jnp.where(m, zn, 0.0), axis=1)

    # pairs across chunks: one state per stream
    cv = plgpu.load(c_smem, layout=TILE).astype(f32)
    lam_rows = lambda lv: row(rows_smem, _LAM + lv, C, BV)  # noqa: E731
    write = lambda y: product([(T_(b_smem), x) for x in halves(y, w_smem)],  # noqa: E731
                              (Ka, BV))
    decay = rows_smem[_DECAY, 0]
    shared = None if reverse or packed else write(cv * row(rows_smem, _WRITE, C, BV))
    new_states = []
    for k, (S, lv) in enumerate(zip(states, streams)):
      if packed:
        x0 = pairs0 + _PAIR_ROWS + 3 * k
        read_w, write_w = row(rows_smem, x0, C, BV), row(rows_smem, x0 + 1, C, BV)
        keep = rows_smem[x0 + 2, 0]
        reads, writes = rows_smem[x0 + 2, 1] > 0, rows_smem[x0 + 2, 2] > 0
      else:
        read_w = row(rows_smem, _READ, C, BV)
        write_w = row(rows_smem, _WRITE, C, BV) * (lam_rows(lv) if reverse and lv else 1.0)
        if lv is None:                         # hierarchy off: read and write every chunk
          reads, writes, keep = None, None, decay
        else:
          x = lv - lo
          bit = ((c >> x) & 1) == 1
          block = (1 << (x + 1)) - 1
          reads, writes = (~bit, bit) if reverse else (bit, ~bit)
          keep = jnp.where((c & block) == (block if reverse else 0), 0.0, decay)

      def do_read(S=S, lv=lv, read_w=read_w):
        rd = read_w * product([(a_smem, x) for x in halves(S, s_smem)], (C, BV))
        dl = jnp.sum(qxv * rd, axis=1) if with_dlam else zeros((C,))
        return (rd if reverse or lv is None else rd * lam_rows(lv)), dl

      rd, dl = do_read() if reads is None else lax.cond(
          reads, do_read, lambda: (zeros((C, BV)), zeros((C,))))
      out = out + rd
      if with_dlam and lv is not None:
        dlam[lv] = dlam[lv] + dl if lv in dlam else dl
      if shared is not None:                   # aligned causal: the one write product
        new_states.append(S * keep + (shared if writes is None else
                                      shared * writes.astype(f32)))
      elif writes is None:
        new_states.append(S * keep + write(cv * write_w))
      else:
        new_states.append(lax.cond(
            writes, lambda S=S, keep=keep, w=write_w: S * keep + write(cv * w),
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
  neighbour = ((lambda i: (jnp.minimum(N - i, N - 1), 0)) if reverse
               else (lambda i: (jnp.maximum(i - 1, 0), 0)))
  head = lambda x, r: x.at[bi, :, h // r]  # noqa: E731
  ra, rb, rc = ratios[:3]
  a_spec = plgpu.BlockSpec((C, Ka), index, transforms=tiling)
  c_spec = plgpu.BlockSpec((C, BV), index, transforms=tiling)
  inputs = [head(a_ref, ra), head(b_ref, rb), head(c_ref, rc).at[:, cols]]
  specs = [a_spec, a_spec, c_spec]
  if with_dlam:
    inputs.append(head(qx_ref, ratios[3]).at[:, cols])
    specs.append(c_spec)
  inputs.append(rows_ref.at[bi, h])
  specs.append(plgpu.BlockSpec((rows_ref.shape[2] // N, C), index))
  if packed:
    bn_ref, cn_ref, near_ref = near_refs
    inputs += [head(bn_ref, rb), head(cn_ref, rc).at[:, cols], near_ref.at[bi, h]]
    specs += [plgpu.BlockSpec((C, Ka), neighbour, transforms=tiling),
              plgpu.BlockSpec((C, BV), neighbour, transforms=tiling),
              plgpu.BlockSpec((near_ref.shape[2] // N, C), index)]
  pipeline = plgpu.emit_pipeline(step, grid=(N,), max_concurrent_steps=min(_STAGES, N),
                                 in_specs=specs,
                                 init_carry=tuple(zeros((Ka, BV)) for _ in streams))
  pipeline(*inputs)
  if with_dlam:
    plgpu.wait_smem_to_gmem(0)


def level_scan(a_BPXA, b_BPXA, c_BPXV, g_BHP, lam_BHLP=None, qx_BPXV=None, pos_BP=None,
               doc_BP=None, *, heads, chunk_size, reverse, levels=None, out_dtype=jnp.float32,
               block_v=32, precise_states=False, all_levels=False, interpret=False):
  """kernel.level_scan on Mosaic GPU: the same arguments less the Triton launch ones, the same
  outputs, out_BPHV [, dlam_JBHLP]. `check` names what it cannot serve."""
  with_dlam, packed = qx_BPXV is not None, pos_BP is not None
  check(a_BPXA, b_BPXA, c_BPXV, chunk_size=chunk_size, block_v=block_v, levels=levels,
        with_dlam=with_dlam, packed=packed, all_levels=all_levels)
  B, P, _, Ka = a_BPXA.shape
  Vc = c_BPXV.shape[-1]
  C, H, N = chunk_size, heads, P // chunk_size
  dt = jnp.result_type(a_BPXA.dtype, b_BPXA.dtype, c_BPXV.dtype)
  BV = _block_v(block_v, Vc, C, Ka, P, levels, with_dlam, jnp.dtype(dt).itemsize, packed,
                all_levels)
  J = Vc // BV
  intra_levels, streams, lam_levels = _streams(C, P, levels, packed, all_levels)
  a, b, c = (x.astype(dt) for x in (a_BPXA, b_BPXA, c_BPXV))
  qx = [qx_BPXV.astype(dt)] if with_dlam else []
  ratios = tuple(H // x.shape[2] for x in [a, b, c] + qx)
  sds = jax.ShapeDtypeStruct
  out_type = [sds((B, P, H, Vc), out_dtype)] + (
      [sds((J, B, H, lam_levels, P), f32)] if with_dlam else [])
  tiling = transforms(BV, jnp.dtype(dt).itemsize)
  scratch = [plgpu.SMEM((C, C), dt, transforms=tiling),
             plgpu.SMEM((2, Ka, BV), dt, transforms=tiling),
             plgpu.SMEM((2, C, BV), dt, transforms=tiling)] + (
                 [plgpu.SMEM((lam_levels, C), f32)] if with_dlam else [])
  kernel = plgpu.kernel(
      functools.partial(_kernel, C=C, N=N, Ka=Ka, BV=BV, ratios=ratios,
                        intra_levels=intra_levels, streams=streams, lam_levels=lam_levels,
                        reverse=reverse, packed=packed, with_dlam=with_dlam,
                        precise=precise_states),
      out_type=out_type, scratch_types=scratch, grid=(B, H, J), grid_names=('b', 'h', 'j'),
      interpret=interpret_params(interpret),
      kernel_name='loglinear_level_scan_mgpu_' + ('packed_' if packed else '')
      + ('rev' if reverse else 'fwd'))
  rows, near = _rows(g_BHP, lam_BHLP, pos_BP, doc_BP, C, lam_levels, streams, reverse)
  outs = kernel(a, b, c, *qx, rows, *([b, c, near] if packed else []))
  return tuple(outs) if with_dlam else outs[0]
