"""Every GDN kernel of chunkwise.py as a Mosaic GPU kernel (`plgpu.kernel`), off the deprecated
Pallas-Triton lowering: the two state scans (`state_scan`, `state_scan_bwd`), the output and its
backward (`output`, `output_bwd`), the UT transform (`ut_transform`) and the per-chunk gradients
(`chunk_bwd`). KernelConfig(backend='mosaic') selects all six; GDN's default backend='auto' those
timed faster than Triton's (chunkwise.AUTO_MOSAIC: all but chunk_bwd), on a
Hopper GPU where `serves`; chunkwise dispatches here.

Same inputs, outputs, dtypes and recurrences as the Triton kernels: per chunk of C tokens, with
a = wm o e^{G_C - G}, e = rho o e^G and gam' = e^{G_C} (0 when a document starts in the chunk),

  forward (S the float32 state at the chunk start, chunks in order):
    h_n = S;  Vn = U - rho o (W S);  S <- gam' S + K^T (a o Vn)
  backward (dS the float32 cotangent of the state after the chunk, chunks in reverse):
    dh_n = dS;  dVn = dVl + a o (K dS);  dS <- gam' dS + Q^T (e o dO) - W^T (rho o dVn)

Both are one driver (`_scan_kernel`) with a per-chunk body each (`_fwd_chunk`, `_bwd_chunk`).
Grid (B, H, V / BV), one warpgroup per block:
- The carried state stays in registers (the WGMMA accumulator layout) across chunks; the chunk's
  [C, K] and [C, BV] inputs stream GMEM -> SMEM by TMA through `plgpu.emit_pipeline` (two chunks
  in flight); the per-chunk outputs (h or dh, Vn or dVn) go back by TMA from double-buffered SMEM
  slots (a slot is rewritten once its store two chunks back has been read; emit_pipeline's
  out_specs would do the same, but their predicated stores do not run in the interpreter).
- The state, rounded to the input dtype (the dtype h / dh is stored in, and the dtype the Triton
  kernels' dots round it to), is written to its output slot, which is the B operand of the
  chunk's first WGMMA (W S or K dS, A from the streamed SMEM tile).
- The state update's products are WGMMAs whose A operand is a streamed [C, K] tile read
  transposed in place (K^T; Q^T and W^T) and whose B operand is a [C, BV] tile the chunk writes
  to SMEM in the input dtype; they accumulate into one accumulator, added to gam' S in
  registers. The Triton kernels round e^{G_C - G} o K (e^G o Q) and the masked Vn (dO) to the
  input dtype instead; here the row scales are folded into the [C, BV] operand before rounding,
  one rounding fewer, so the two agree to the input dtype's precision.
- The per-chunk gates (in-chunk cumsum of g, a, e, gam') and the masks' folding are computed in
  XLA before the kernel, [B, H, P] float32 (small beside the [B, P, H, K] streams), and stream in
  with the chunk's tiles as one [X, C] block (`_coefficients`), off the sequential path.
Limits: 16-bit inputs (WGMMA reads transposed SMEM operands in 16-bit types only), C and K
multiples of 64 (the WGMMA M dimension of W S, K dS and K^T Vn), BV a multiple of 16 (the SMEM
swizzle: 128 bytes from BV = 64 in bf16, 64 at 32, 32 at 16; the two operands of a WGMMA must
share it, so the [C, K] tiles take that of the [*, BV] tiles). A scan whose tiles do not fit in
SMEM halves BV (`_block_v`); chunks of 128 at K = 128 do not fit the backward at all.

The output kernel, O = rho o (e^G o Q) h_n + (Q K^T o E) Vn, is parallel over chunks: grid (B, H,
V / BV, chunk groups), each block pipelining a few chunks' Q, K, h_n, Vn tiles by TMA
(`_chunks_per_block`); per chunk one WGMMA for Q K^T, the decay and pair mask in registers, and
two WGMMAs into one [C, BV] accumulator. Its backward (grid (B, H, chunk groups), the whole V of
at most 128 in one block) adds dO's tiles and runs six WGMMAs a chunk, their transposed operands
read in place from SMEM.

The UT transform (grid (B, H, chunk groups), chunks of 64) computes A = diag(beta) (K K^T o Es)
with one WGMMA, its inverse T by the Triton kernel's route in ten float32 [C, C] products
(`_unit_lower_inverse`, each three bf16 WGMMAs of the operands' bf16 halves: `_split_product`),
and W, U as WGMMAs of T rounded to the input dtype, as the Triton kernel rounds it. chunk_bwd
(grid (B, H, chunk groups), one chunk in flight at K = V = 128: its six [C, *] and [K, V] inputs
take 128 KiB, float32 T 16 more) runs its eleven products as WGMMAs with transposed operands read
in place; what needs a sum over a whole chunk (the chunk decay's cotangent, the chunk-end term of
dG, the reverse cumsum) is left to XLA on [B, H, P] vectors.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.mgpu import (ROWS, SMEM_BYTES, TILE, chunk_rows, col, f32, interpret_params,
                                 iota, product, row, transforms)

__all__ = ['check', 'chunk_bwd', 'chunk_bwd_serves', 'output', 'output_bwd', 'serves',
           'state_scan', 'state_scan_bwd', 'ut_serves', 'ut_transform']

_STAGES = 2                            # chunks in flight in the pipeline
_BWD_STREAMS = ('grp', 'grp', 'hk', 'hv', 'hv')   # the backward's [C, *] inputs: Q, K, W, dO, dVl


def _unserved(L):
  """(name, value, expected) of the first launch field the Mosaic state scans cannot serve, or
  None."""
  checks = [('dtype', jnp.dtype(L.mm).name, jnp.dtype(L.mm).itemsize == 2,
             'bfloat16 or float16'),
            ('chunk_size', L.C, L.C % 64 == 0, 'a multiple of 64'),
            ('K (key width)', L.K, L.K % 64 == 0, 'a multiple of 64'),
            ('block_v', L.BV, L.BV % 16 == 0, 'a multiple of 16')]
  return next(((name, value, expected) for name, value, ok, expected in checks if not ok), None)


def check(L):
  """ValueError naming the first launch field the Mosaic state scans cannot serve."""
  if bad := _unserved(L):
    name, value, expected = bad
    raise ValueError(f"GDN state scans (backend='mosaic'): {name}={value!r}; expected {expected}")


def serves(L):
  """Whether both scans run this launch: its fields served, and the backward (the larger) fits in
  SMEM at some block of V."""
  return _unserved(L) is None and _smem_bytes(L, _BWD_STREAMS, 2, 16) <= SMEM_BYTES


def _gates(L, g_BHP):
  """(a_BHP, eG_BHP, gam_BHN), float32: the row scale a = wm o e^{G_C - G}, e^G and the chunk
  decay gam' (0 where a document starts in the chunk)."""
  B, H, P = g_BHP.shape
  N = P // L.C
  G_BHNC = jnp.cumsum(g_BHP.astype(f32).reshape(B, H, N, L.C), axis=-1)
  gs_BHN = G_BHNC[..., -1]
  a_BHP = jnp.exp(gs_BHN[..., None] - G_BHNC).reshape(B, H, P)
  gam_BHN = jnp.exp(gs_BHN)
  if L.masks is not None:
    a_BHP = a_BHP * L.masks.wm[:, None, :]
    keep_BN = jnp.max(L.masks.keep.reshape(B, N, L.C), axis=-1) > 0
    gam_BHN = jnp.where(keep_BN[:, None, :], gam_BHN, 0.0)
  return a_BHP, jnp.exp(G_BHNC).reshape(B, H, P), gam_BHN


def _fwd_chunk(smems, rows, rho, S_smem):
  """(Vn, [(K, a o Vn)]) of a chunk: its output tile and the update's (A^T, B) operands."""
  k, w, u = smems
  (a,) = rows
  ws = product([(w, S_smem)], a.shape)
  vn = plgpu.load(u, layout=TILE).astype(f32) - (ws if rho is None else ws * rho)
  return vn, [(k, vn * a)]


def _bwd_chunk(smems, rows, rho, dS_smem):
  """(dVn, [(Q, e o dO), (W, -rho o dVn)]) of a chunk, as _fwd_chunk."""
  q, k, w, do, dvl = smems
  a, e = rows
  dvn = plgpu.load(dvl, layout=TILE).astype(f32) + a * product([(k, dS_smem)], a.shape)
  return dvn, [(q, e * plgpu.load(do, layout=TILE).astype(f32)),
               (w, -(dvn if rho is None else dvn * rho))]


def _scan_kernel(*refs, chunk, streams, n_rows, C, K, BV, R, N, reverse, packed, with_init,
                 with_final):
  """One (b, h, block of V) of a scan. refs: the streamed inputs (`streams`: 'grp' [P, G, K],
  'hk' [P, H, K] or 'hv' [P, H, V] per row), the coefficients [B, H, N X, C] (`_coefficients`),
  the initial carry if with_init; the outputs (states [B, H, N K, V], tokens [B, P, H, V], the
  final carry if with_final); SMEM scratch (state slots, token slots, one [C, BV] tile per update
  product). chunk(smems, rows, rho, state_smem) -> (token tile, [(A, B)]): the carry update is
  sum A^T B."""
  refs = list(refs)
  take = lambda n: [refs.pop(0) for _ in range(n)]  # noqa: E731
  ins, (coef_ref,) = take(len(streams)), take(1)
  init_ref = take(1)[0] if with_init else None
  state_ref, tok_ref = take(2)
  final_ref = take(1)[0] if with_final else None
  state_smem, tok_smem, *operand_smems = refs
  b, h, j = (lax.axis_index(n) for n in ('b', 'h', 'j'))
  cols = pl.ds(j * BV, BV)
  dt = tok_ref.dtype

  def step(idx, *smems_and_carry):
    *smems, coef_smem, S = smems_and_carry
    i = idx[0]
    c = N - 1 - i if reverse else i
    rows = [lax.broadcast_in_dim(plgpu.load(coef_smem.at[x], layout=ROWS), (C, BV), [0])
            for x in range(n_rows + packed)]
    rho = rows.pop() if packed else None
    gam = coef_smem[n_rows + packed, 0]
    slot = i % _STAGES
    plgpu.wait_smem_to_gmem(_STAGES - 1, wait_read_only=True)   # this slot's last stores
    state_out, tok_out = state_smem.at[slot], tok_smem.at[slot]
    state_out[...] = S.astype(dt)
    plgpu.commit_smem()
    tok, products = chunk(smems, rows, rho, state_out)
    tok_out[...] = tok.astype(dt)
    for o_smem, (_, x) in zip(operand_smems, products):
      o_smem[...] = x.astype(dt)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(state_out, state_ref.at[b, h, pl.ds(c * K, K), cols],
                            commit_group=False)
    plgpu.copy_smem_to_gmem(tok_out, tok_ref.at[b, pl.ds(c * C, C), h, cols], commit_group=False)
    plgpu.commit_smem_to_gmem_group()
    return gam * S + product([(a.transpose((1, 0)), o) for (a, _), o in
                               zip(products, operand_smems)], (K, BV))

  tiling = transforms(BV, jnp.dtype(dt).itemsize)
  index = (lambda i: (N - 1 - i, 0)) if reverse else (lambda i: (i, 0))
  views = {'grp': lambda x: x.at[b, :, h // R, :], 'hk': lambda x: x.at[b, :, h, :],
           'hv': lambda x: x.at[b, :, h, cols]}
  specs = [plgpu.BlockSpec((C, BV if s == 'hv' else K), index, transforms=tiling)
           for s in streams] + [plgpu.BlockSpec((n_rows + packed + 1, C), index)]
  if with_init:
    S0 = plgpu.load(init_ref.at[b, h, :, cols], layout=TILE, optimized=False)
  else:
    S0 = plgpu.layout_cast(jnp.zeros((K, BV), f32), TILE)
  pipeline = plgpu.emit_pipeline(step, grid=(N,), max_concurrent_steps=min(_STAGES, N),
                                 init_carry=S0, in_specs=specs)
  S = pipeline(*(views[s](x) for s, x in zip(streams, ins)), coef_ref.at[b, h])
  if with_final:
    final_ref[b, h, :, cols] = S
  plgpu.wait_smem_to_gmem(0)


def _coefficients(L, rows, gam_BHN):
  """The scans' per-chunk rows (`chunk_rows`): `rows`, then rho if packed, then the chunk decay
  gam' repeated over C."""
  rho = [L.masks.rho] if L.packed else []
  return chunk_rows(rows + rho + [jnp.repeat(gam_BHN, L.C, axis=-1)], L.B, L.H, L.P, L.C)


def _smem_bytes(L, streams, n_products, BV):
  """SMEM of a scan kernel: the pipeline's input slots (with the coefficients' X <= 4 rows), the
  output slots, the operand tiles."""
  tiles = _STAGES * sum(L.C * (BV if s == 'hv' else L.K) for s in streams) + _STAGES * (
      L.K + L.C) * BV + n_products * L.C * BV
  return tiles * jnp.dtype(L.mm).itemsize + _STAGES * 4 * L.C * 4


def _block_v(L, streams, n_products):
  """L.BV, halved (down to 16) until the kernel fits in SMEM (the backward streams five [C, *]
  inputs: at K = 128 and chunks of 64 it takes block_v 64 where the forward takes 128);
  ValueError when even 16 does not fit."""
  BV = L.BV
  while BV > 16 and _smem_bytes(L, streams, n_products, BV) > SMEM_BYTES:
    BV //= 2
  if _smem_bytes(L, streams, n_products, BV) > SMEM_BYTES:
    raise ValueError(f"GDN state scans (backend='mosaic'): chunk_size={L.C} with K={L.K} needs "
                     f"{_smem_bytes(L, streams, n_products, BV)} bytes of SMEM at block_v "
                     f"{BV}; expected at most {SMEM_BYTES} (chunks of 64 fit)")
  return BV


def _scan(L, name, chunk, streams, inputs, rows, gam_BHN, init_BHKV, with_final, reverse):
  """The scan kernel's call: states_BHMV and tokens_BPHV (input dtype) and, with with_final, the
  float32 final carry_BHKV."""
  check(L)
  n_products = {_fwd_chunk: 1, _bwd_chunk: 2}[chunk]
  BV = _block_v(L, streams, n_products)
  with_init = init_BHKV is not None
  N = L.P // L.C
  sds = jax.ShapeDtypeStruct
  tiling = transforms(BV, jnp.dtype(L.mm).itemsize)
  out_type = [sds((L.B, L.H, N * L.K, L.V), L.mm), sds((L.B, L.P, L.H, L.V), L.mm)] + (
      [sds((L.B, L.H, L.K, L.V), f32)] if with_final else [])
  smem = lambda *shape: plgpu.SMEM(shape, L.mm, transforms=tiling)  # noqa: E731
  kernel = plgpu.kernel(
      functools.partial(_scan_kernel, chunk=chunk, streams=streams, n_rows=len(rows), C=L.C,
                        K=L.K, BV=BV, R=L.H // inputs[0].shape[2], N=N, reverse=reverse,
                        packed=L.packed, with_init=with_init, with_final=with_final),
      out_type=out_type,
      scratch_types=[smem(_STAGES, L.K, BV), smem(_STAGES, L.C, BV)]
      + [smem(L.C, BV) for _ in range(n_products)],
      grid=(L.B, L.H, L.V // BV), grid_names=('b', 'h', 'j'),
      interpret=interpret_params(L.interpret),
      kernel_name=L.name(name))
  init = [init_BHKV.astype(f32)] if with_init else []
  return kernel(*inputs, _coefficients(L, rows, gam_BHN), *init)


def state_scan(L, k_BPGK, w_BPHK, u_BPHV, g_BHP, init_BHKV=None, with_final=False):
  """chunkwise.state_scan on Mosaic GPU (L: its _Launch): h_BHMV, Vn_BPHV and, with with_final,
  the float32 final state_BHKV."""
  a_BHP, _, gam_BHN = _gates(L, g_BHP)
  return _scan(L, 'state_scan_mgpu', _fwd_chunk, ('grp', 'hk', 'hv'), (k_BPGK, w_BPHK, u_BPHV),
               [a_BHP], gam_BHN, init_BHKV, with_final, reverse=False)


def state_scan_bwd(L, q_BPGK, k_BPGK, w_BPHK, g_BHP, do_BPHV, dvl_BPHV, dfinal_BHKV=None):
  """chunkwise.state_scan_bwd on Mosaic GPU: dh_BHMV, dVn_BPHV and, with dfinal_BHKV, the
  float32 initial-state cotangent dinit_BHKV."""
  a_BHP, eG_BHP, gam_BHN = _gates(L, g_BHP)
  e_BHP = eG_BHP if L.masks is None else eG_BHP * L.masks.rho[:, None, :]
  return _scan(L, 'state_scan_bwd_mgpu', _bwd_chunk, _BWD_STREAMS,
               (q_BPGK, k_BPGK, w_BPHK, do_BPHV, dvl_BPHV), [a_BHP, e_BHP], gam_BHN,
               dfinal_BHKV, dfinal_BHKV is not None, reverse=True)


# ------------------------------------------------------------------------------------------------
# The output kernel: parallel over chunks


_BLOCKS = 2 * 132                      # blocks the output grid aims at (two per H100 SM)


def _chunks_per_block(L, n_v_blocks):
  """Chunks one block of the output kernel pipelines: the largest power of two (<= 8) dividing N
  that still leaves _BLOCKS blocks, so that loads of the next chunk overlap this one's WGMMAs
  without leaving SMs idle."""
  N = L.P // L.C
  per = 8
  while per > 1 and (N % per or L.B * L.H * n_v_blocks * (N // per) < _BLOCKS):
    per //= 2
  return per


def _pair_decay(rows_smem, C, packed, strict=False):
  """E = e^{G_t - G_s} on the pairs t >= s (t > s if strict) of one document, both real, 0
  elsewhere, [C, C] in the WGMMA layout (rows of `_output_rows` or `_ut_rows`)."""
  mask = (iota(C, 0) > iota(C, 1)) if strict else (iota(C, 0) >= iota(C, 1))
  if packed:
    mask = mask & (row(rows_smem, 3, C, C) == col(rows_smem, 5, C)) & (
        row(rows_smem, 4, C, C) > 0) & (col(rows_smem, 6, C) > 0)
  return jnp.exp(jnp.where(mask, row(rows_smem, 0, C, C) - col(rows_smem, 2, C), -jnp.inf))


def _output_rows(L, g_BHP):
  """The output kernels' rows per chunk: G (in-chunk cumsum of g), e = rho o e^G, G again, and if
  packed the document id and whether the token is real, twice. A vector read both as rows and as
  columns is stored twice: Mosaic GPU's layout inference finds no layout for one SMEM row loaded
  in both."""
  N = L.P // L.C
  G_BHP = jnp.cumsum(g_BHP.astype(f32).reshape(L.B, L.H, N, L.C), axis=-1).reshape(g_BHP.shape)
  e_BHP = jnp.exp(G_BHP) if L.masks is None else jnp.exp(G_BHP) * L.masks.rho[:, None]
  pairs = [L.masks.doc, L.masks.pos >= 0] if L.packed else []
  return [G_BHP, e_BHP, G_BHP] + pairs * 2


def _output_kernel(q_ref, k_ref, h_ref, vn_ref, rows_ref, o_ref, o_smem, qe_smem, a_smem, *, C, K,
                   BV, R, per, n_rows, packed):
  """O = (e o Q) h_n + (Q K^T o E) Vn for `per` chunks of one (b, h, block of V) (the n_rows rows
  of a chunk: `_output_rows`). e o Q and Q K^T o E go to SMEM in the input dtype as the A
  operands of the WGMMAs (the Mosaic GPU interpreter takes no register operand)."""
  b, h, j, s = (lax.axis_index(n) for n in ('b', 'h', 'j', 's'))
  cols = pl.ds(j * BV, BV)
  dt = o_ref.dtype

  def step(idx, q_smem, k_smem, h_smem, vn_smem, rows_smem):
    i = idx[0]
    c = s * per + i
    decay = _pair_decay(rows_smem, C, packed)
    a = product([(q_smem, k_smem.transpose((1, 0)))], (C, C)) * decay
    qe = plgpu.load(q_smem, layout=TILE).astype(f32) * row(rows_smem, 1, C, K)
    qe_smem[...] = qe.astype(dt)
    a_smem[...] = a.astype(dt)
    plgpu.commit_smem()
    o = product([(qe_smem, h_smem), (a_smem, vn_smem)], (C, BV))
    slot = i % _STAGES
    plgpu.wait_smem_to_gmem(_STAGES - 1, wait_read_only=True)   # this slot's last store
    o_smem.at[slot][...] = o.astype(dt)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem.at[slot], o_ref.at[b, pl.ds(c * C, C), h, cols])

  tiling = transforms(BV, jnp.dtype(dt).itemsize)
  first = s * per
  tok = lambda x: x.at[b, pl.ds(first * C, per * C)]  # noqa: E731
  specs = [plgpu.BlockSpec((C, K), lambda i: (i, 0), transforms=tiling)] * 2 + [
      plgpu.BlockSpec((K, BV), lambda i: (i, 0), transforms=tiling),
      plgpu.BlockSpec((C, BV), lambda i: (i, 0), transforms=tiling),
      plgpu.BlockSpec((n_rows, C), lambda i: (i, 0))]
  pipeline = plgpu.emit_pipeline(step, grid=(per,), max_concurrent_steps=min(_STAGES, per),
                                 in_specs=specs)
  pipeline(tok(q_ref).at[:, h // R, :], tok(k_ref).at[:, h // R, :],
           h_ref.at[b, h, pl.ds(first * K, per * K), cols], tok(vn_ref).at[:, h, cols],
           rows_ref.at[b, h, pl.ds(first * n_rows, per * n_rows)])
  plgpu.wait_smem_to_gmem(0)


def _output_block_v(L, n_rows):
  """The output kernel's block of V: L.chunk_bv (up to 128), halved (down to 16) until its
  pipelined tiles (Q, K, h_n, Vn and the rows of `_STAGES` chunks), output slots and A operands
  fit in SMEM."""
  def smem(BV):
    tiles = _STAGES * (2 * L.C * L.K + L.K * BV + 2 * L.C * BV) + L.C * (L.K + L.C)
    return tiles * jnp.dtype(L.mm).itemsize + _STAGES * n_rows * L.C * 4
  BV = L.chunk_bv
  while BV > 16 and smem(BV) > SMEM_BYTES:
    BV //= 2
  if smem(BV) > SMEM_BYTES:
    raise ValueError(f"GDN output (backend='mosaic'): chunk_size={L.C} with K={L.K} needs "
                     f"{smem(BV)} bytes of SMEM at block_v {BV}; expected at most {SMEM_BYTES}")
  return BV


def output(L, q_BPGK, k_BPGK, g_BHP, h_BHMV, vn_BPHV, out_dtype):
  """chunkwise.output on Mosaic GPU (KernelConfig(backend='mosaic')): O_BPHV in out_dtype, the
  input dtype's rounding of the same float32 sums (16-bit inputs and outputs, C and K multiples of
  64: `check`)."""
  check(L)
  if jnp.dtype(out_dtype) != jnp.dtype(L.mm):
    raise ValueError(f"GDN output (backend='mosaic'): out_dtype={jnp.dtype(out_dtype).name}; "
                     f"expected the inputs' {jnp.dtype(L.mm).name}")
  N = L.P // L.C
  rows = _output_rows(L, g_BHP)
  BV = _output_block_v(L, n_rows=len(rows))
  per = _chunks_per_block(L, L.V // BV)
  tiling = transforms(BV, jnp.dtype(L.mm).itemsize)
  kernel = plgpu.kernel(
      functools.partial(_output_kernel, C=L.C, K=L.K, BV=BV, R=L.H // q_BPGK.shape[2], per=per,
                        n_rows=len(rows), packed=L.packed),
      out_type=jax.ShapeDtypeStruct((L.B, L.P, L.H, L.V), L.mm),
      scratch_types=[plgpu.SMEM(shape, L.mm, transforms=tiling)
                     for shape in ((_STAGES, L.C, BV), (L.C, L.K), (L.C, L.C))],
      grid=(L.B, L.H, L.V // BV, N // per), grid_names=('b', 'h', 'j', 's'),
      interpret=interpret_params(L.interpret),
      kernel_name=L.name('output_mgpu'))
  return kernel(q_BPGK, k_BPGK, h_BHMV, vn_BPHV, chunk_rows(rows, L.B, L.H, L.P, L.C))


def _output_bwd_kernel(q_ref, k_ref, h_ref, vn_ref, do_ref, rows_ref, dvl_ref, dq_ref, dk_ref,
                       dg_ref, a_smem, dp_smem, dg_smem, *, C, K, V, R, per, n_rows, packed):
  """chunkwise.output_bwd for `per` chunks of one (b, h): with A = Q K^T o E, dVl = A^T dO,
  dQ = e o (dO h_n^T) + (dO Vn^T o E) K, the output's part of dK, (dO Vn^T o E)^T Q, and of dG:
  per token its row part (q . dQ's state term and the row sums of dO Vn^T o A) and its column
  part (the column sums), dg_ref rows 2n and 2n + 1 (the caller subtracts them: a vector in the
  WGMMA row layout and one in its column layout do not add in registers). The whole V in one
  block; the outputs go from registers to GMEM, so the SMEM holds two chunks of inputs."""
  b, h, s = (lax.axis_index(n) for n in ('b', 'h', 's'))

  def step(idx, q_smem, k_smem, h_smem, vn_smem, do_smem, rows_smem):
    c = s * per + idx[0]
    decay = _pair_decay(rows_smem, C, packed)
    a = product([(q_smem, k_smem.transpose((1, 0)))], (C, C)) * decay
    a_smem[...] = a.astype(a_smem.dtype)
    plgpu.commit_smem()
    dvl = product([(a_smem.transpose((1, 0)), do_smem)], (C, V))
    daqk = product([(do_smem, vn_smem.transpose((1, 0)))], (C, C))
    dq = product([(do_smem, h_smem.transpose((1, 0)))], (C, K)) * row(rows_smem, 1, C, K)
    dG = jnp.sum(plgpu.load(q_smem, layout=TILE).astype(f32) * dq, axis=1)
    dp_smem[...] = (daqk * decay).astype(dp_smem.dtype)
    plgpu.commit_smem()
    dq = dq + product([(dp_smem, k_smem)], (C, K))
    dk = product([(dp_smem.transpose((1, 0)), q_smem)], (C, K))
    dx = daqk * a
    tok = pl.ds(c * C, C)
    dvl_ref[b, tok, h, :] = dvl.astype(dvl_ref.dtype)
    dq_ref[b, tok, h, :] = dq.astype(dq_ref.dtype)
    dk_ref[b, tok, h, :] = dk
    plgpu.wait_smem_to_gmem(0)      # dg_smem's last store
    dg_smem[0] = dG + jnp.sum(dx, axis=1)
    dg_smem[1] = jnp.sum(dx, axis=0)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(dg_smem, dg_ref.at[b, h, pl.ds(2 * c, 2)])

  tiling = transforms(V, jnp.dtype(a_smem.dtype).itemsize)
  first = s * per
  tok = lambda x: x.at[b, pl.ds(first * C, per * C)]  # noqa: E731
  specs = [plgpu.BlockSpec((C, K), lambda i: (i, 0), transforms=tiling)] * 2 + [
      plgpu.BlockSpec((K, V), lambda i: (i, 0), transforms=tiling)] + [
      plgpu.BlockSpec((C, V), lambda i: (i, 0), transforms=tiling)] * 2 + [
      plgpu.BlockSpec((n_rows, C), lambda i: (i, 0))]
  pipeline = plgpu.emit_pipeline(step, grid=(per,), max_concurrent_steps=min(_STAGES, per),
                                 in_specs=specs)
  pipeline(tok(q_ref).at[:, h // R, :], tok(k_ref).at[:, h // R, :],
           h_ref.at[b, h, pl.ds(first * K, per * K)], tok(vn_ref).at[:, h], tok(do_ref).at[:, h],
           rows_ref.at[b, h, pl.ds(first * n_rows, per * n_rows)])
  plgpu.wait_smem_to_gmem(0)


def output_bwd(L, q_BPGK, k_BPGK, g_BHP, h_BHMV, vn_BPHV, do_BPHV, dq_dtype=f32):
  """chunkwise.output_bwd on Mosaic GPU (KernelConfig(backend='mosaic')): dvl_BPHV (input
  dtype), dq_BPHK (dq_dtype), float32 dk_BPHK and dG_BHP, the same sums as the Triton kernel's.
  16-bit inputs, C and K multiples of 64 (`check`), V at most 128 (one block)."""
  check(L)
  N = L.P // L.C
  rows = _output_rows(L, g_BHP)
  smem = (_STAGES * (2 * L.C * L.K + L.K * L.V + 2 * L.C * L.V) + 2 * L.C * L.C) * jnp.dtype(
      L.mm).itemsize + _STAGES * len(rows) * L.C * 4 + 2 * L.C * 4
  if L.V > 128 or smem > SMEM_BYTES:
    raise ValueError(f"GDN output_bwd (backend='mosaic'): V={L.V}, chunk_size={L.C}, K={L.K} "
                     f"need {smem} bytes of SMEM; expected V <= 128 and at most {SMEM_BYTES}")
  per = _chunks_per_block(L, 1)
  sds = jax.ShapeDtypeStruct
  tiling = transforms(L.V, jnp.dtype(L.mm).itemsize)
  kernel = plgpu.kernel(
      functools.partial(_output_bwd_kernel, C=L.C, K=L.K, V=L.V, R=L.H // q_BPGK.shape[2],
                        per=per, n_rows=len(rows), packed=L.packed),
      out_type=[sds((L.B, L.P, L.H, L.V), L.mm), sds((L.B, L.P, L.H, L.K), dq_dtype),
                sds((L.B, L.P, L.H, L.K), f32), sds((L.B, L.H, 2 * N, L.C), f32)],
      scratch_types=[plgpu.SMEM((L.C, L.C), L.mm, transforms=tiling)] * 2
      + [plgpu.SMEM((2, L.C), f32)],
      grid=(L.B, L.H, N // per), grid_names=('b', 'h', 's'),
      interpret=interpret_params(L.interpret),
      kernel_name=L.name('output_bwd_mgpu'))
  dvl, dq, dk, dg = kernel(q_BPGK, k_BPGK, h_BHMV, vn_BPHV, do_BPHV,
                           chunk_rows(rows, L.B, L.H, L.P, L.C))
  dg = dg.reshape(L.B, L.H, N, 2, L.C)
  return dvl, dq, dk, (dg[:, :, :, 0] - dg[:, :, :, 1]).reshape(L.B, L.H, L.P)


# ------------------------------------------------------------------------------------------------
# The UT transform: parallel over chunks

_SUB = 16   # A's diagonal blocks, inverted by their nilpotent series (chunkwise.SUB)


def _bf16_halves(x):
  """float32 x as x1 + x2 in bfloat16 (8 significant bits each: 16 with the two)."""
  x1 = x.astype(jnp.bfloat16)
  return x1, (x - x1.astype(f32)).astype(jnp.bfloat16)


def _split_product(x, y, smems):
  """x @ y of float32 register tiles to about 2^-16 of the product: the three bf16 WGMMAs of
  their halves (`_bf16_halves`) x2 y1 + x1 y2 + x1 y1, smallest first, the operands in the four
  bfloat16 SMEM tiles `smems` (whatever the inputs' 16-bit dtype). T is read only rounded to the
  input dtype (2^-9 for bf16), and the ten products of the inverse keep it within about 2e-6 of
  its largest entry (a numpy model of this kernel, beta up to 2); one bf16 WGMMA per product
  would add 1e-3, as much as the rounding itself, and float32 precision (six WGMMAs of three bf16
  thirds each) would double the work. (A TF32 WGMMA would read its B operand only K-major, which
  a register tile stored to SMEM is not; bf16 WGMMAs read either, at twice the TF32 rate.)"""
  for smem, half in zip(smems, _bf16_halves(x) + _bf16_halves(y)):
    smem[...] = half
  plgpu.commit_smem()
  x1, x2, y1, y2 = smems
  return product([(x2, y1), (x1, y2), (x1, y1)], (x.shape[0], y.shape[1]))


def _unit_lower_inverse(A, C, smems):
  """(I + A)^-1 of a strictly lower triangular float32 [C, C] A, by the pieces of chunkwise's
  Triton kernel: the 16 x 16 diagonal blocks D = I + N inverted by the nilpotent series
  (I - N)(I + N^2)(I + N^4)(I + N^8), then (I + A)^-1 = (I + M)^-1 D^-1 with M = D^-1 (A - N),
  strictly lower by blocks, so (I + M)^-1 = (I - M)(I + M^2)... ends after C / 16 terms. Every
  product of three bf16 WGMMAs (`_split_product`): ten of them at C = 64."""
  r, s = iota(C, 0), iota(C, 1)
  eye = jnp.where(r == s, 1.0, 0.0)
  N = jnp.where((r >> 4) == (s >> 4), A, 0.0)     # _SUB = 16: blocks of 2^4
  mm = functools.partial(_split_product, smems=smems)

  def series(X, P, n):
    for _ in range(n.bit_length() - 2):           # X (I + P^2)(I + P^4)... up to P^(n / 2)
      P = mm(P, P)
      X = X + mm(X, P)
    return X
  d_inv = series(eye - N, N, _SUB)
  M = mm(d_inv, A - N)
  return mm(series(eye - M, M, C // _SUB), d_inv)


def _ut_rows(L, g_BHP, beta_BHP):
  """The UT kernel's rows per chunk: G (in-chunk cumsum of g), beta, G again and if packed the
  pair masks' document ids and real flags, twice (as `_output_rows`, beta for e)."""
  rows = _output_rows(L, g_BHP)
  rows[1] = beta_BHP.astype(f32)
  return rows


def _ut_kernel(k_ref, v_ref, rows_ref, w_ref, u_ref, t_ref, x_smems, t_smem, bw_smem, bv_smem, *,
               C, R, per, packed):
  """A = diag(beta) (K K^T o Es), T = (I + A)^-1 (float32), W = T diag(beta e^G) K and
  U = T diag(beta) V for `per` chunks of one (b, h); the outputs go from registers to GMEM."""
  b, h, s = (lax.axis_index(n) for n in ('b', 'h', 's'))
  dt = w_ref.dtype
  K, V = w_ref.shape[-1], u_ref.shape[-1]

  def step(idx, k_smem, v_smem, rows_smem):
    tok = pl.ds((s * per + idx[0]) * C, C)
    kk = product([(k_smem, k_smem.transpose((1, 0)))], (C, C))
    A = row(rows_smem, 1, C, C) * kk * _pair_decay(rows_smem, C, packed, strict=True)
    T = _unit_lower_inverse(A, C, [x_smems.at[i] for i in range(4)])
    t_ref[b, tok, h, :] = T
    t_smem[...] = T.astype(dt)
    beta_eG = row(rows_smem, 1, C, K) * jnp.exp(row(rows_smem, 0, C, K))
    bw_smem[...] = (plgpu.load(k_smem, layout=TILE).astype(f32) * beta_eG).astype(dt)
    bv_smem[...] = (plgpu.load(v_smem, layout=TILE).astype(f32) * row(rows_smem, 1, C, V)
                    ).astype(dt)
    plgpu.commit_smem()
    w_ref[b, tok, h, :] = product([(t_smem, bw_smem)], (C, K)).astype(dt)
    u_ref[b, tok, h, :] = product([(t_smem, bv_smem)], (C, V)).astype(dt)

  tiling = transforms(min(C, K, V), jnp.dtype(dt).itemsize)
  first = s * per
  tok = lambda x: x.at[b, pl.ds(first * C, per * C)]  # noqa: E731
  n = 3 + 4 * packed                           # rows per chunk (`_ut_rows`)
  specs = [plgpu.BlockSpec((C, K), lambda i: (i, 0), transforms=tiling),
           plgpu.BlockSpec((C, V), lambda i: (i, 0), transforms=tiling),
           plgpu.BlockSpec((n, C), lambda i: (i, 0))]
  pipeline = plgpu.emit_pipeline(step, grid=(per,), max_concurrent_steps=min(_STAGES, per),
                                 in_specs=specs)
  pipeline(tok(k_ref).at[:, h // R, :], tok(v_ref).at[:, h, :],
           rows_ref.at[b, h, pl.ds(first * n, per * n)])


def _ut_smem_bytes(L):
  """The UT kernel's SMEM: two chunks of K, V and rows in flight, the split products' four
  [C, C] operand tiles, T, beta e^G o K and beta o V, all in the input dtype."""
  itemsize = jnp.dtype(L.mm).itemsize
  return (_STAGES * ((L.K + L.V) * L.C * itemsize + 7 * L.C * 4)
          + (5 * L.C + L.K + L.V) * L.C * itemsize)


def ut_serves(L):
  """Whether the Mosaic UT transform runs this launch: chunks of 64 (the inverse's [C, C]
  operand tiles grow with C^2), K and V at most 256 (one WGMMA N) and the tiles in SMEM."""
  return (_unserved(L) is None and L.C == 64 and L.K <= 256 and L.V <= 256
          and _ut_smem_bytes(L) <= SMEM_BYTES)


def ut_transform(L, k_BPGK, v_BPHV, g_BHP, beta_BHP):
  """chunkwise.ut_transform on Mosaic GPU (KernelConfig(backend='mosaic'), where `ut_serves`):
  W_BPHK, U_BPHV (input dtype) and T_BPHC (float32), the same sums as the Triton kernel's to
  float32 rounding."""
  check(L)
  rows = _ut_rows(L, g_BHP, beta_BHP)
  per = _chunks_per_block(L, 1)
  N = L.P // L.C
  sds = jax.ShapeDtypeStruct
  bf = lambda *shape: plgpu.SMEM(shape, L.mm, transforms=transforms(  # noqa: E731
      min(L.C, L.K, L.V), jnp.dtype(L.mm).itemsize))
  kernel = plgpu.kernel(
      functools.partial(_ut_kernel, C=L.C, R=L.H // k_BPGK.shape[2], per=per, packed=L.packed),
      out_type=[sds((L.B, L.P, L.H, L.K), L.mm), sds((L.B, L.P, L.H, L.V), L.mm),
                sds((L.B, L.P, L.H, L.C), f32)],
      scratch_types=[plgpu.SMEM((4, L.C, L.C), jnp.bfloat16, transforms=transforms(L.C, 2)),
                     bf(L.C, L.C), bf(L.C, L.K), bf(L.C, L.V)],
      grid=(L.B, L.H, N // per), grid_names=('b', 'h', 's'),
      interpret=interpret_params(L.interpret),
      kernel_name=L.name('ut_transform_mgpu'))
  return kernel(k_BPGK, v_BPHV, chunk_rows(rows, L.B, L.H, L.P, L.C))


# ------------------------------------------------------------------------------------------------
# chunk_bwd: the state write's and the UT transform's gradients, parallel over chunks


def _chunk_bwd_rows(L, g_BHP, beta_BHP, dg_out_BHP):
  """chunk_bwd's rows per chunk: `_ut_rows` (G, beta, G, the pair masks), then e^{G_C - G}, e^G,
  output_bwd's part of dG and, if packed, rho and wm."""
  rows = _ut_rows(L, g_BHP, beta_BHP)
  G_BHNC = rows[0].reshape(L.B, L.H, L.P // L.C, L.C)
  to_end = jnp.exp(G_BHNC[..., -1:] - G_BHNC).reshape(rows[0].shape)
  stream = [L.masks.rho, L.masks.wm] if L.packed else []
  return rows + [to_end, jnp.exp(rows[0]), dg_out_BHP] + stream


def _chunk_bwd_kernel(k_ref, v_ref, h_ref, dh_ref, vn_ref, dvn_ref, rows_ref, t_ref, dk_out_ref,
                      dk_ref, dv_ref, parts_ref, hd_ref, t_smem, cc_smem, dw_smem, kbw_smem,
                      cv_smem, parts_smem, hd_smem, *, C, R, per, stages, packed):
  """chunkwise's _chunk_bwd_kernel for `per` chunks of one (b, h), less what needs a sum over a
  whole chunk: its rows part of dG (output_bwd's part, the UT terms, -z), the columns part (a
  vector in the WGMMA column layout, which does not add to a row one in registers), dbeta and z
  (parts rows 4n .. 4n + 3), and sum_V h o dh (the chunk decay's cotangent by rows of K); the
  caller adds the chunk-end term and the reverse cumsum. Every transposed operand is read in place
  from SMEM; T, dW, beta e^G o K, beta o V, dT, T^T dT and dKK go to SMEM in the input dtype (the
  Triton kernel's dots round them the same)."""
  b, h, s = (lax.axis_index(n) for n in ('b', 'h', 's'))
  dt = k_ref.dtype
  K, V = k_ref.shape[-1], v_ref.shape[-1]
  n_pairs = 3 + 4 * packed
  TO_END, EG, DG_OUT, RHO, WM = range(n_pairs, n_pairs + 5)
  T_ = lambda x: x.transpose((1, 0))  # noqa: E731

  def step(idx, k_smem, v_smem, h_smem, dh_smem, vn_smem, dvn_smem, rows_smem, tf_smem):
    c = s * per + idx[0]
    tok = pl.ds(c * C, C)
    vec = lambda x: plgpu.load(rows_smem.at[x], layout=ROWS)  # noqa: E731
    ld = lambda x: plgpu.load(x, layout=TILE).astype(f32)  # noqa: E731

    def scaled(x_smem, x):       # packed rows: x_smem o row x, in cv_smem
      if not packed:
        return x_smem
      cv_smem[...] = (ld(x_smem) * row(rows_smem, x, C, V)).astype(dt)
      plgpu.commit_smem()
      return cv_smem

    # the state write: K2 = e^{G_C - G} o K. (Register tiles are short-lived: K is reloaded
    # from SMEM where it is needed and dV leaves as soon as it is made, so that fewer [C, K]
    # float32 tiles, 64 registers a thread each, are live at once.)
    dk2 = product([(scaled(vn_smem, WM), T_(dh_smem))], (C, K))
    hd = jnp.sum(ld(h_smem) * ld(dh_smem), axis=1)
    to_end = row(rows_smem, TO_END, C, K)
    z = jnp.sum(ld(k_smem) * to_end * dk2, axis=1)
    dk = plgpu.load(dk_out_ref.at[b, tok, h, :], layout=TILE, optimized=False) + dk2 * to_end
    # W = T Bw: dW = -(rho o dVn) h^T, dT = dW Bw^T, dBw = T^T dW
    dw = -product([(scaled(dvn_smem, RHO), T_(h_smem))], (C, K))
    bw = lambda: row(rows_smem, 1, C, K) * row(rows_smem, EG, C, K)  # noqa: E731
    t_smem[...] = plgpu.load(tf_smem, layout=TILE).astype(dt)
    dw_smem[...] = dw.astype(dt)
    kbw_smem[...] = (ld(k_smem) * bw()).astype(dt)
    plgpu.commit_smem()
    dT = product([(dw_smem, T_(kbw_smem))], (C, C))
    dbw = product([(T_(t_smem), dw_smem)], (C, K))
    dk = dk + dbw * bw()
    sk = jnp.sum(ld(k_smem) * dbw, axis=1)
    dbeta = vec(EG) * sk
    dG = vec(DG_OUT) + vec(1) * vec(EG) * sk - z
    # U = T diag(beta) V: dT += dVn (beta o V)^T, dBu = T^T dVn
    cv_smem[...] = (ld(v_smem) * row(rows_smem, 1, C, V)).astype(dt)
    plgpu.commit_smem()
    dT = dT + product([(dvn_smem, T_(cv_smem))], (C, C))
    dbu = product([(T_(t_smem), dvn_smem)], (C, V))
    dv_ref[b, tok, h, :] = (dbu * row(rows_smem, 1, C, V)).astype(dv_ref.dtype)
    dbeta = dbeta + jnp.sum(ld(v_smem) * dbu, axis=1)
    # T = (I + A)^-1: dA = -T^T dT T^T on the strict pairs (every use below is weighted by Es,
    # 0 off them), A = diag(beta) (K K^T o Es)
    cc_smem[...] = dT.astype(dt)
    plgpu.commit_smem()
    x = product([(T_(t_smem), cc_smem)], (C, C))
    cc_smem[...] = x.astype(dt)
    plgpu.commit_smem()
    da = -product([(cc_smem, T_(t_smem))], (C, C))
    es = _pair_decay(rows_smem, C, packed, strict=True)
    mkk = product([(k_smem, T_(k_smem))], (C, C)) * es
    dm = row(rows_smem, 1, C, C) * da
    dx = dm * mkk
    cc_smem[...] = (dm * es).astype(dt)
    plgpu.commit_smem()
    dk = dk + product([(cc_smem, k_smem), (T_(cc_smem), k_smem)], (C, K))
    dbeta = dbeta + jnp.sum(da * mkk, axis=1)
    dk_ref[b, tok, h, :] = dk.astype(dk_ref.dtype)
    plgpu.wait_smem_to_gmem(0)        # the last chunk's parts have left
    parts_smem[0] = dG + jnp.sum(dx, axis=1)
    parts_smem[1] = jnp.sum(dx, axis=0)
    parts_smem[2] = dbeta
    parts_smem[3] = z
    hd_smem[0] = hd
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(parts_smem, parts_ref.at[b, h, pl.ds(4 * c, 4)])
    plgpu.copy_smem_to_gmem(hd_smem, hd_ref.at[b, h, pl.ds(c, 1)])

  tiling = transforms(min(C, K, V), jnp.dtype(dt).itemsize)
  first = s * per
  tok = lambda x: x.at[b, pl.ds(first * C, per * C)]  # noqa: E731
  n = n_pairs + 3 + 2 * packed                  # rows per chunk (`_chunk_bwd_rows`)
  spec = lambda *shape: plgpu.BlockSpec(shape, lambda i: (i, 0), transforms=tiling)  # noqa: E731
  specs = [spec(C, K), spec(C, V), spec(K, V), spec(K, V), spec(C, V), spec(C, V),
           plgpu.BlockSpec((n, C), lambda i: (i, 0)), plgpu.BlockSpec((C, C), lambda i: (i, 0))]
  pipeline = plgpu.emit_pipeline(step, grid=(per,), max_concurrent_steps=min(stages, per),
                                 in_specs=specs)
  states = lambda x: x.at[b, h, pl.ds(first * K, per * K)]  # noqa: E731
  pipeline(tok(k_ref).at[:, h // R, :], tok(v_ref).at[:, h], states(h_ref), states(dh_ref),
           tok(vn_ref).at[:, h], tok(dvn_ref).at[:, h],
           rows_ref.at[b, h, pl.ds(first * n, per * n)], tok(t_ref).at[:, h, :])
  plgpu.wait_smem_to_gmem(0)


def _chunk_bwd_smem_bytes(L, stages):
  """chunk_bwd's SMEM: `stages` chunks of K, V, h, dh, Vn, dVn, the rows and float32 T in flight;
  T in the input dtype and one [C, C] scratch tile, two [C, K] and one [C, V] operand tiles;
  the parts' rows."""
  itemsize = jnp.dtype(L.mm).itemsize
  tiles = stages * (L.C * (L.K + 3 * L.V) + 2 * L.K * L.V) + 2 * L.C * L.C + L.C * (2 * L.K + L.V)
  n_rows = 6 + 6 * L.packed
  return tiles * itemsize + 4 * (stages * (n_rows + L.C) * L.C + 4 * L.C + L.K)


def chunk_bwd_serves(L):
  """Whether the Mosaic chunk_bwd runs this launch: its fields served (`check`'s), K and V at
  most 256 (one WGMMA N) and one chunk's tiles in SMEM."""
  return (_unserved(L) is None and L.K <= 256 and L.V <= 256
          and _chunk_bwd_smem_bytes(L, 1) <= SMEM_BYTES)


def chunk_bwd(L, k_BPGK, v_BPHV, g_BHP, beta_BHP, t_BPHC, h_BHMV, dh_BHMV, vn_BPHV, dvn_BPHV,
              dk_out_BPHK, dg_out_BHP, grad_dtype=f32):
  """chunkwise.chunk_bwd on Mosaic GPU (KernelConfig(backend='mosaic'), where
  `chunk_bwd_serves`): dk_BPHK and dv_BPHV in grad_dtype, float32 dg_BHP and dbeta_BHP, the same
  sums as the Triton kernel's. Two chunks in flight where their tiles fit in SMEM, else one."""
  check(L)
  N = L.P // L.C
  rows = _chunk_bwd_rows(L, g_BHP, beta_BHP, dg_out_BHP)
  stages = 2 if _chunk_bwd_smem_bytes(L, 2) <= SMEM_BYTES else 1
  per = _chunks_per_block(L, 1)
  sds = jax.ShapeDtypeStruct
  bf = lambda *shape: plgpu.SMEM(shape, L.mm, transforms=transforms(  # noqa: E731
      min(L.C, L.K, L.V), jnp.dtype(L.mm).itemsize))
  kernel = plgpu.kernel(
      functools.partial(_chunk_bwd_kernel, C=L.C, R=L.H // k_BPGK.shape[2], per=per,
                        stages=stages, packed=L.packed),
      out_type=[sds((L.B, L.P, L.H, L.K), grad_dtype), sds((L.B, L.P, L.H, L.V), grad_dtype),
                sds((L.B, L.H, 4 * N, L.C), f32), sds((L.B, L.H, N, L.K), f32)],
      scratch_types=[bf(L.C, L.C), bf(L.C, L.C), bf(L.C, L.K), bf(L.C, L.K), bf(L.C, L.V),
                     plgpu.SMEM((4, L.C), f32), plgpu.SMEM((1, L.K), f32)],
      grid=(L.B, L.H, N // per), grid_names=('b', 'h', 's'),
      interpret=interpret_params(L.interpret),
      kernel_name=L.name('chunk_bwd_mgpu'))
  dk, dv, parts, hd = kernel(k_BPGK, v_BPHV, h_BHMV, dh_BHMV, vn_BPHV, dvn_BPHV,
                             chunk_rows(rows, L.B, L.H, L.P, L.C), t_BPHC,
                             dk_out_BPHK.astype(f32))
  dG_rows, dG_cols, dbeta, z = jnp.moveaxis(parts.reshape(L.B, L.H, N, 4, L.C), 3, 0)
  _, _, gam_BHN = _gates(L, g_BHP)        # the chunk decay, 0 where a document starts
  last_BHN = jnp.sum(z, axis=-1) + gam_BHN * jnp.sum(hd, axis=-1)
  dG = (dG_rows - dG_cols).at[..., -1].add(last_BHN)
  dg = jnp.flip(jnp.cumsum(jnp.flip(dG, -1), axis=-1), -1)     # reverse cumsum in each chunk
  return dk, dv, dg.reshape(L.B, L.H, L.P), dbeta.reshape(L.B, L.H, L.P)
