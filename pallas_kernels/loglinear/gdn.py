"""Pallas kernels for chunked Gated DeltaNet and log-linear Gated DeltaNet (kernels.md §2.2, §5).

Same signatures and semantics as lloglin.ops.delta.gdn_chunked and
lloglin.ops.loglinear.loglinear_gdn_chunked, plus `interpret` and `config`.

Forward. Per chunk of C tokens and head (G = in-chunk cumsum of g, D[t, s] = exp(G_t - G_s) for
s <= t, exponents masked before exp), the UT/WY quantities come from one parallel XLA pass
(`_wy`): T_g = (I + strict_lower(diag(beta) (K K^T o D)))^-1, W = T_g diag(beta e^G) K and
T_g diag(beta) (fp32, C per token). One Pallas program per (batch, head, block of V) then scans
the chunks in order, forms U = T_g diag(beta) V and carries fp32 [K, BV] states:

  GDN:        v_new = U - W S,  o = (e^G o q) S + tril(q k^T o D) v_new,
              S <- e^{G_C} S + k2^T v_new
  log-linear: o = (Aeff o M) V + sum_x rho_x o (qt S_x),  Aeff = (q k^T o D) T_g diag(beta),
              S_x <- keep (e^{G_C} S_x - k2^T W S_x) + write k2^T U

with k2 = e^{G_C - G} o k, qt = e^G o q - (q k^T o D) W, M the level weights lam_t^lvl(t, s) of
the levels inside a chunk (the causal mask for GDN) and one stream S_x per chunk level x (global
level log2 C + 1 + x): read with rho_x = lam of that level in chunks with bit x set, written in
chunks with bit x clear, reset at every aligned block of 2^(x+1) chunks (the level-parallel
masked scans of kernels.md §3.5 b, as in pallas_kernels.loglinear.kernel). Plain GDN is one
stream, always read (rho = 1), written and kept.

Packed documents (`_packed_masks`): M pairs tokens of one document by the level of their
positions inside it, and every level >= 1 (plain GDN: the one stream, reset at document starts)
is a stream with per-token masks computed in XLA as in delta.chunked_recurrence: rho (lam x read,
only before the first reset in the chunk), wm (written, only after the last reset) and keep (no
reset in the chunk); each stream writes k2^T T_g diag(beta wm) V. About one stream per level, so
packed rows cost more than aligned ones (not measured).

Backward (jax.custom_vjp). The forward kernel also stores every stream's fp32 state at every
chunk start (N x K x V floats per head and stream: 59 MB per row and head at T = 8192, C = 64,
K = V = 128 with the 7 streams of log-linear GDN; 8 MB for GDN). A reverse Pallas scan
(`gdn_scan_bwd`) carries dS_x and gives the cotangents of qt, k2, W, U, of the chunk decay
e^{G_C} (-> dg) and of rho (-> dlam of the stream levels); with dS = dS_x(n+1) and S = S_x(n):

  dS_x(n) = qt^T (rho o dO) + keep (e^{G_C} dS - W^T k2 dS),  dqt = (rho o dO) S^T,
  dk2 = (write U - keep W S) dS^T,  dW = -keep k2 dS S^T,  dU = write k2 dS,
  d e^{G_C} = keep <S, dS>
(packed: with tb = T_g diag(beta), dtb += k2 dS (wm o V)^T and dV += wm o tb^T k2 dS for dU).

Those and dO (for the intra part) go through jax.vjp of `_prep`, the parallel per-chunk part in
XLA (intra output, qt, k2, W, U; UT transform included), to the gradients of q, k, v, g, beta, lam.

Served by the kernels: any segment_ids_BT (None, or one document per row from position 0 then
padding, decided at run time with lax.cond: the aligned kernels; packed documents: the packed
kernels), chunk_size >= 16; plain GDN's initial state (the streams start from it; its cotangent
is the backward's carried dS after chunk 0) and final states (the carried states after the last
chunk; their cotangent seeds the backward; log-linear GDN's FenwickState from the packed
kernels' streams, one per level >= 1, plus level 0 = beta k v^T of the last token; its initial
FenwickState enters as those streams' initial states, positions continuing from its t_B).
chunk_size < 16 and T beyond the capacity of the L levels run the XLA form, so no argument is
ever silently ignored. Feature
axes are zero-padded to powers of two (>= 16) and T to whole chunks; batches whose arrays would
reach 2^31 elements are split (pallas_kernels.loglinear.common). Launch defaults: GDN_CONFIG and
LOGLINEAR_GDN_CONFIG (common.py, tuned on an H200). On an H200 the GDN kernels are correct (bf16
within kernels.md 9.3) and about 5x slower than fla's (benchmarks/RESULTS.md).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from lloglin.ops import checks
from lloglin.ops import delta
from lloglin.ops import hierarchy
from lloglin.ops import loglinear as ops_loglinear
from pallas_kernels.loglinear.common import (GDN_CONFIG, LOGLINEAR_GDN_CONFIG, KernelConfig,
                                             gate_layouts, in_row_batches, launch_config,
                                             one_document_per_row, padded_inputs, pow2)
from pallas_kernels.loglinear.kernel import _dot, _level_masks

__all__ = ['gdn_chunked', 'loglinear_gdn_chunked', 'gdn_scan', 'gdn_scan_bwd']

HIGHEST = lax.Precision.HIGHEST


# ------------------------------------------------------------------------------------------------
# Kernels


def _flags(c, lv, lo):
  """(read, keep, write) of level stream lv in aligned chunk c (chunk bit x = lv - lo): read in
  chunks with bit x set, written in the others, reset at every block of 2^(x+1) chunks. Plain GDN
  (lv None): always."""
  if lv is None:
    return True, True, True
  x = lv - lo
  read = ((c >> x) & 1) == 1
  return read, (c & ((1 << (x + 1)) - 1)) != 0, ~read


def _where(flag, x):
  return x if flag is True else jnp.where(flag, x, 0.0)


def _stream_masks(packed, c, x, lv, lo, sl, lam, mask_refs):
  """(rho, read, keep, wm) of stream x in chunk c: rho the per-token read weight (None: 1), read /
  keep scalar flags (True: always), wm the write weight (a flag, or per token when packed)."""
  if not packed:
    read, keep, write = _flags(c, lv, lo)
    return (None if lv is None else lam[lv]), read, keep, write
  rho_ref, wm_ref, keep_ref = mask_refs
  rho = rho_ref[x, sl]
  read = jnp.sum((rho != 0).astype(jnp.int32)) > 0
  return rho, read, jnp.max(keep_ref[x, sl]) > 0, wm_ref[x, sl]


def _carry_loop(body, N, n, shape, init_ref, out_ref):
  """body over the N chunks, carrying n fp32 states of `shape`: read from init_ref (None: zeros),
  the last ones written to out_ref (None: dropped)."""
  init = tuple(jnp.zeros(shape, jnp.float32) if init_ref is None else init_ref[x]
               for x in range(n))
  last = lax.fori_loop(0, N, body, init)
  if out_ref is not None:
    for x, S in enumerate(last):
      out_ref[x] = S


def _fwd_kernel(*refs, C, N, intra_levels, streams, lam_levels, packed, with_states, with_init,
                with_final, mm_dtype):
  refs = list(refs)
  n_out = 1 + with_states + with_final
  refs, (o_ref, *outs) = refs[:-n_out], refs[-n_out:]
  s_ref = outs.pop(0) if with_states else None
  final_ref = outs.pop(0) if with_final else None
  init_ref = refs.pop() if with_init else None
  q_ref, k_ref, w_ref, tb_ref, v_ref, g_ref = refs[:6]
  del refs[:6]
  lam_ref = refs.pop(0) if lam_levels else None
  n_masks = (2 + 3 * bool(streams)) if packed else 0    # pos, doc [, rho, wm, keep]
  pos_ref, doc_ref, *mask_refs = refs[:n_masks] if packed else (None, None)
  K, BV = q_ref.shape[-1], v_ref.shape[-1]
  lo = C.bit_length()                        # level of chunk bit x is lo + x
  row = lax.broadcasted_iota(jnp.int32, (C, C), 0)
  col = lax.broadcasted_iota(jnp.int32, (C, C), 1)
  causal = row >= col
  aligned_masks = _level_masks(row ^ col, intra_levels) if lam_levels and not packed else None

  def body(c, states):
    sl = pl.ds(pl.multiple_of(c * C, C), C)
    q, k, w, tb, v = q_ref[sl, :], k_ref[sl, :], w_ref[sl, :], tb_ref[sl, :], v_ref[sl, :]
    g = g_ref[sl].astype(jnp.float32)
    G = jnp.cumsum(g)
    gs = jnp.sum(g)
    a = _dot(q, k, mm_dtype, (1, 1)) * jnp.exp(jnp.where(causal, G[:, None] - G[None, :],
                                                         -jnp.inf))
    qe = q.astype(jnp.float32) * jnp.exp(G)[:, None]
    k2 = k.astype(jnp.float32) * jnp.exp(gs - G)[:, None]
    u = None if packed else _dot(tb, v, mm_dtype)   # packed: each stream writes its own part
    lam = [lam_ref[l, sl] for l in range(lam_levels)]
    if with_states:
      for x, S in enumerate(states):
        s_ref[x, pl.ds(pl.multiple_of(c * K, K), K), :] = S
    if not lam_levels and not packed:
      (S,) = states
      vn = u - _dot(w, S, mm_dtype)
      out = _dot(qe, S, mm_dtype) + _dot(a, vn, mm_dtype)
      new_states = (S * jnp.exp(gs) + _dot(k2, vn, mm_dtype, (0, 0)),)
    else:
      if packed:
        pos, doc = pos_ref[sl], doc_ref[sl]
        real = pos >= 0
        pair = causal & (doc[:, None] == doc[None, :]) & real[:, None] & real[None, :]
        masks = [m & pair for m in _level_masks(pos[:, None] ^ pos[None, :], intra_levels)]
      else:
        masks = aligned_masks
      if lam_levels:
        wl = jnp.zeros((C, C), jnp.float32)
        for l, mask in enumerate(masks):
          wl = wl + jnp.where(mask, lam[l][:, None], 0.0)
      else:                                    # packed plain GDN: the document mask
        wl = jnp.where(pair, 1.0, 0.0)
      out = _dot(_dot(a, tb, mm_dtype) * wl, v, mm_dtype)    # (Aeff o M) V
      ku = None if packed else _dot(k2, u, mm_dtype, (0, 0))
      new_states = []
      for x, (S, lv) in enumerate(zip(states, streams)):
        rho, read, keep, write = _stream_masks(packed, c, x, lv, lo, sl, lam, mask_refs)
        ws = _dot(w, S, mm_dtype)

        def do_read(S=S, ws=ws, rho=rho):
          return (_dot(qe, S, mm_dtype) - _dot(a, ws, mm_dtype)) * rho[:, None]

        out = out + lax.cond(read, do_read, lambda: jnp.zeros((C, BV), jnp.float32))
        moved = S * jnp.exp(gs) - _dot(k2, ws, mm_dtype, (0, 0))
        if packed:
          written = _dot(k2, _dot(tb, v * write[:, None], mm_dtype), mm_dtype, (0, 0))
        else:
          written = _where(write, ku)
        new_states.append(_where(keep, moved) + written)
      new_states = tuple(new_states)
    o_ref[sl, :] = out.astype(o_ref.dtype)
    return new_states

  _carry_loop(body, N, len(streams), (K, BV), init_ref, final_ref)


def _bwd_kernel(*refs, C, N, streams, lam_levels, packed, with_state_grads, mm_dtype):
  """Reverse chunk scan: the transpose of the inter-chunk part (module docstring, Backward).
  with_state_grads: seeded with the final states' cotangent, it also returns the initial
  states' (the carried dS after chunk 0)."""
  refs = list(refs)
  dinit_ref = refs.pop() if with_state_grads else None
  drho_ref = refs.pop() if lam_levels else None
  if packed:
    qt_ref, k2_ref, w_ref, tb_ref, v_ref, do_ref, g_ref, s_ref, *mask_refs = refs[:11]
    lam_ref = None
  else:
    qt_ref, k2_ref, w_ref, u_ref, do_ref, g_ref, s_ref = refs[:7]
    lam_ref = refs[7] if lam_levels else None
    mask_refs = None
  n_in = (11 if packed else 7 + bool(lam_levels)) + with_state_grads
  dfinal_ref = refs[n_in - 1] if with_state_grads else None
  if packed:
    dqt_ref, dk2_ref, dw_ref, dtb_ref, dv_ref, dg_ref = refs[n_in:]
  else:
    dqt_ref, dk2_ref, dw_ref, du_ref, dg_ref = refs[n_in:]
  K, BV = qt_ref.shape[-1], do_ref.shape[-1]
  lo = C.bit_length()

  def body(i, dstates):
    c = N - 1 - i
    sl = pl.ds(pl.multiple_of(c * C, C), C)
    qt, k2, w = qt_ref[sl, :], k2_ref[sl, :], w_ref[sl, :]
    do = do_ref[sl, :].astype(jnp.float32)
    gam = jnp.exp(jnp.sum(g_ref[sl].astype(jnp.float32)))
    lam = [lam_ref[l, sl] for l in range(lam_levels)] if lam_ref is not None else None
    if packed:
      tb, v = tb_ref[sl, :], v_ref[sl, :].astype(jnp.float32)
      dtb = jnp.zeros((C, C), jnp.float32)
      dv = jnp.zeros((C, BV), jnp.float32)
    else:
      u = u_ref[sl, :]
      du = jnp.zeros((C, BV), jnp.float32)
    dqt = jnp.zeros((C, K), jnp.float32)
    dk2 = jnp.zeros((C, K), jnp.float32)
    dw = jnp.zeros((C, K), jnp.float32)
    dgam = jnp.zeros((), jnp.float32)
    new = []
    for x, (E, lv) in enumerate(zip(dstates, streams)):
      rho, read, keep, write = _stream_masks(packed, c, x, lv, lo, sl, lam, mask_refs)
      S = s_ref[x, pl.ds(pl.multiple_of(c * K, K), K), :]

      def do_read(S=S, rho=rho):             # (dqt, dS from the read) of this stream
        r = do if rho is None else do * rho[:, None]
        return _dot(r, S, mm_dtype, (1, 1)), _dot(qt, r, mm_dtype, (0, 0))

      if read is True:
        dqt_x, dS_read = do_read()
      else:
        dqt_x, dS_read = lax.cond(read, do_read, lambda: (jnp.zeros((C, K), jnp.float32),
                                                          jnp.zeros((K, BV), jnp.float32)))
      if drho_ref is not None:
        drho_ref[x, sl] = _where(read, jnp.sum(do * _dot(qt, S, mm_dtype), axis=1))
      dqt = dqt + dqt_x
      kE = _dot(k2, E, mm_dtype)
      wS = _dot(w, S, mm_dtype)
      if packed:
        vw = v * write[:, None]
        ux = _dot(tb, vw, mm_dtype)
        dtb = dtb + _dot(kE, vw, mm_dtype, (1, 1))
        dv = dv + _dot(tb, kE, mm_dtype, (0, 0)) * write[:, None]
      else:
        ux = _where(write, u)
        du = du + _where(write, kE)
      dk2 = dk2 + _dot(ux - _where(keep, wS), E, mm_dtype, (1, 1))
      dw = dw - _where(keep, _dot(kE, S, mm_dtype, (1, 1)))
      dgam = dgam + _where(keep, jnp.sum(S * E))
      new.append(dS_read + _where(keep, gam * E - _dot(w, kE, mm_dtype, (0, 0))))
    dqt_ref[sl, :] = dqt
    dk2_ref[sl, :] = dk2
    dw_ref[sl, :] = dw
    if packed:
      dtb_ref[sl, :] = dtb
      dv_ref[sl, :] = dv
    else:
      du_ref[sl, :] = du
    dg_ref[sl] = jnp.full((C,), gam * dgam, jnp.float32)
    return tuple(new)

  _carry_loop(body, N, len(streams), (K, BV), dfinal_ref, dinit_ref)


def _streams(levels, C, P, packed=False, all_levels=False):
  """(intra_levels, streams, lam_levels) of a length-P scan. Plain GDN (levels None): one stream.
  Log-linear: aligned, the levels < log2 C + 1 inside chunks and one stream per level above, up
  to the levels P positions reach (all_levels: positions continue an initial state's, so all
  L); packed, every level inside chunks (document positions) and a stream for every level >= 1
  (sources in earlier chunks)."""
  if levels is None:
    return 1, (None,), 0
  lo = C.bit_length()
  hi = levels if all_levels else min(levels, (P - 1).bit_length() + 1)
  if packed:
    return hi, tuple(range(1, hi)), hi
  return min(lo, hi), tuple(range(lo, hi)), hi


def _pallas(kernel, grid, in_specs, out_specs, out_shape, name, num_warps, num_stages, interpret):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret, name=name)


def _state_spec(X, rows, BV):
  """BlockSpec of per-stream fp32 states [B, H, X, rows, V]: one block of V per program."""
  return pl.BlockSpec((None, None, X, rows, BV), lambda b, h, j: (b, h, 0, 0, j))


def _mask_specs(masks, X, P):
  """BlockSpecs and arrays of packed mode: pos_BP, doc_BP and, with X > 0 streams, rho_BHXP,
  wm_BXP, keep_BXP."""
  tok = pl.BlockSpec((None, P), lambda b, h, j: (b, 0))
  if not X:
    return [tok, tok], list(masks[:2])
  return [tok, tok, pl.BlockSpec((None, None, X, P), lambda b, h, j: (b, h, 0, 0))] + [
      pl.BlockSpec((None, X, P), lambda b, h, j: (b, 0, 0))] * 2, list(masks)


def gdn_scan(q_BPGK, k_BPGK, w_BPHK, tb_BPHC, v_BPHV, g_BHP, lam_BHLP=None, masks=None,
             init_BHXKV=None, *, chunk_size, levels=None, all_levels=False, with_states=False,
             with_final=False, out_dtype=jnp.float32, block_v=32, num_warps=8, num_stages=2,
             interpret=False):
  """The forward chunk scan of the module docstring over P = N * chunk_size padded tokens,
  feature axes powers of two >= 16. q/k: G groups (head h reads h // (H // G)), already scaled; w
  and tb = T_g diag(beta) (rows t, columns s of its chunk): per head, from `_wy`. levels: the L of
  lam (hierarchy on; lam_BHLP holds at least the levels a length-P sequence reaches) or None
  (plain GDN). masks (packed documents; None: positions aligned with the hierarchy):
  (pos_BP (-1 at padding), doc_BP, rho_BHXP, wm_BXP, keep_BXP) from `_packed_masks`.
  init_BHXKV: fp32 states the streams start from (None: zeros).
  Returns o_BPHV, with_states also the fp32 state of every stream at every chunk start,
  states_BHXMV (M = N * K, chunk n at rows n K .. n K + K - 1), and with_final the fp32 states
  after the last chunk, final_BHXKV."""
  B, P, G, K = q_BPGK.shape
  H, V = v_BPHV.shape[2:]
  C = chunk_size
  R = H // G
  BV = min(block_v, V)
  packed = masks is not None
  intra_levels, streams, lam_levels = _streams(levels, C, P, packed, all_levels)
  X = len(streams)
  in_specs = [pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h // R, 0))] * 2 + [
      pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h, 0)),
      pl.BlockSpec((None, P, None, C), lambda b, h, j: (b, 0, h, 0)),
      pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j)),
      pl.BlockSpec((None, None, P), lambda b, h, j: (b, h, 0))]
  args = [q_BPGK, k_BPGK, w_BPHK, tb_BPHC, v_BPHV, g_BHP]
  if lam_levels:
    in_specs.append(pl.BlockSpec((None, None, lam_levels, P), lambda b, h, j: (b, h, 0, 0)))
    args.append(lam_BHLP[:, :, :lam_levels])
  if packed:
    specs, arrays = _mask_specs(masks, X, P)
    in_specs += specs
    args += arrays
  with_states = with_states and X > 0
  with_init = init_BHXKV is not None
  if with_init:
    in_specs.append(_state_spec(X, K, BV))
    args.append(init_BHXKV)
  out_specs = [pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j))]
  out_shape = [jax.ShapeDtypeStruct((B, P, H, V), out_dtype)]
  if with_states:
    M = P // C * K
    out_specs.append(_state_spec(X, M, BV))
    out_shape.append(jax.ShapeDtypeStruct((B, H, X, M, V), jnp.float32))
  if with_final:
    out_specs.append(_state_spec(X, K, BV))
    out_shape.append(jax.ShapeDtypeStruct((B, H, X, K, V), jnp.float32))
  kernel = functools.partial(_fwd_kernel, C=C, N=P // C, intra_levels=intra_levels,
                             streams=streams, lam_levels=lam_levels, packed=packed,
                             with_states=with_states, with_init=with_init, with_final=with_final,
                             mm_dtype=jnp.result_type(q_BPGK.dtype, k_BPGK.dtype))
  name = ('gdn' if levels is None else 'loglinear_gdn') + ('_packed' if packed else '')
  outs = _pallas(kernel, (B, H, V // BV), in_specs, out_specs, out_shape, name + '_chunk_scan',
                 num_warps, num_stages, interpret)(*args)
  return tuple(outs) if with_states or with_final else outs[0]


def gdn_scan_bwd(qt_BPHK, k2_BPHK, w_BPHK, u_BPHV, do_BPHV, g_BHP, states_BHXMV, lam_BHLP=None,
                 masks=None, tb_BPHC=None, v_BPHV=None, dfinal_BHXKV=None, *, chunk_size,
                 levels=None, all_levels=False, mm_dtype=jnp.float32, block_v=32, num_warps=8,
                 num_stages=2, interpret=False):
  """Reverse chunk scan: cotangents of the inter-chunk operands (module docstring, Backward).

  Aligned (masks None): returns dqt, dk2, dw as [J, B, P, H, K] (partial sums over the J feature
  blocks of V), du_BPHV, dg_JBHP (the chunk-decay term) and, with levels, dlam_JBHXP of the X
  stream levels. Packed (masks, tb_BPHC and v_BPHV given, u_BPHV None: each stream writes its own
  tb diag(wm) V): dqt, dk2, dw, dtb_JBPHC, dv_BPHV, dg_JBHP and, with levels, drho_JBHXP.
  dfinal_BHXKV (the final states' cotangent) seeds the scan and adds, last, the initial states'
  cotangent dinit_BHXKV."""
  B, P, H, K = qt_BPHK.shape
  V = do_BPHV.shape[-1]
  C = chunk_size
  BV = min(block_v, V)
  J = V // BV
  packed = masks is not None
  _, streams, lam_levels = _streams(levels, C, P, packed, all_levels)
  X, M = states_BHXMV.shape[2:4]
  tok = lambda width: pl.BlockSpec((None, P, None, width), lambda b, h, j: (b, 0, h, 0))
  blk = pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j))
  part = lambda width: pl.BlockSpec((None, None, P, None, width), lambda b, h, j: (j, b, 0, h, 0))
  g_spec = pl.BlockSpec((None, None, P), lambda b, h, j: (b, h, 0))
  s_spec = _state_spec(X, M, BV)
  f32 = jnp.float32
  partial_BPH = lambda width: jax.ShapeDtypeStruct((J, B, P, H, width), f32)
  g_out = (pl.BlockSpec((None, None, None, P), lambda b, h, j: (j, b, h, 0)),
           jax.ShapeDtypeStruct((J, B, H, P), f32))
  if packed:
    specs, arrays = _mask_specs(masks, X, P)
    in_specs = [tok(K)] * 3 + [tok(C), blk, blk, g_spec, s_spec] + specs[2:]
    args = [qt_BPHK, k2_BPHK, w_BPHK, tb_BPHC, v_BPHV, do_BPHV, g_BHP, states_BHXMV] + arrays[2:]
    out_specs = [part(K)] * 3 + [part(C), blk, g_out[0]]
    out_shape = [partial_BPH(K)] * 3 + [partial_BPH(C), jax.ShapeDtypeStruct((B, P, H, V), f32),
                                        g_out[1]]
  else:
    in_specs = [tok(K)] * 3 + [blk, blk, g_spec, s_spec]
    args = [qt_BPHK, k2_BPHK, w_BPHK, u_BPHV, do_BPHV, g_BHP, states_BHXMV]
    if lam_levels:
      in_specs.append(pl.BlockSpec((None, None, lam_levels, P), lambda b, h, j: (b, h, 0, 0)))
      args.append(lam_BHLP[:, :, :lam_levels])
    out_specs = [part(K)] * 3 + [blk, g_out[0]]
    out_shape = [partial_BPH(K)] * 3 + [jax.ShapeDtypeStruct((B, P, H, V), f32), g_out[1]]
  if lam_levels:
    out_specs.append(pl.BlockSpec((None, None, None, X, P), lambda b, h, j: (j, b, h, 0, 0)))
    out_shape.append(jax.ShapeDtypeStruct((J, B, H, X, P), f32))
  with_state_grads = dfinal_BHXKV is not None
  if with_state_grads:
    in_specs.append(_state_spec(X, K, BV))
    args.append(dfinal_BHXKV)
    out_specs.append(_state_spec(X, K, BV))
    out_shape.append(jax.ShapeDtypeStruct((B, H, X, K, V), f32))
  kernel = functools.partial(_bwd_kernel, C=C, N=P // C, streams=streams, lam_levels=lam_levels,
                             packed=packed, with_state_grads=with_state_grads,
                             mm_dtype=mm_dtype)
  name = ('gdn' if levels is None else 'loglinear_gdn') + ('_packed' if packed else '')
  return tuple(_pallas(kernel, (B, H, J), in_specs, out_specs, out_shape,
                       name + '_chunk_scan_bwd', num_warps, num_stages, interpret)(*args))


# ------------------------------------------------------------------------------------------------
# Wrapper


class _Static(NamedTuple):
  chunk_size: int
  scale: float
  levels: int | None          # None: plain GDN
  interpret: bool
  config: KernelConfig
  final_state: bool = False   # also return the streams' states after the sequence
  offset: bool = False        # log-linear: positions continue an initial state's t_B


def _wy(k_BPGK, g_BPH, beta_BPH, C):
  """Per-chunk UT/WY transform in XLA (parallel over chunks): W_BPHK and T_g diag(beta) as
  tb_BPHC (fp32; U = tb V is formed in the kernel)."""
  B, P, _, K = k_BPGK.shape
  H = beta_BPH.shape[2]
  N = P // C
  f32 = jnp.float32
  ein = functools.partial(jnp.einsum, precision=HIGHEST, preferred_element_type=f32)
  k_BNCHK = delta.expand_groups(k_BPGK, H).reshape(B, N, C, H, K)
  g_BNHC = jnp.moveaxis(g_BPH.astype(f32).reshape(B, N, C, H), 2, 3)
  beta_BNHC = jnp.moveaxis(beta_BPH.astype(f32).reshape(B, N, C, H), 2, 3)
  strict_CC = jnp.tril(jnp.ones((C, C), bool), -1)
  seg_BNHCC = jnp.cumsum(jnp.where(strict_CC, g_BNHC[..., :, None], 0), axis=-2)
  decay_BNHCC = jnp.exp(jnp.where(jnp.tril(jnp.ones((C, C), bool)), seg_BNHCC, -jnp.inf))
  kk_BNHCC = ein('bnthk,bnshk->bnhts', k_BNCHK, k_BNCHK)
  a_BNHCC = jnp.where(strict_CC, beta_BNHC[..., :, None] * decay_BNHCC * kk_BNHCC, 0)
  eye = jnp.broadcast_to(jnp.eye(C, dtype=f32), a_BNHCC.shape)
  tg_BNHCC = lax.linalg.triangular_solve(a_BNHCC, eye, left_side=True, lower=True,
                                         unit_diagonal=True)
  w = ein('bnhts,bnhs,bnshk->bnthk', tg_BNHCC, beta_BNHC * jnp.exp(jnp.cumsum(g_BNHC, axis=-1)),
          k_BNCHK.astype(f32))
  tb = jnp.moveaxis(tg_BNHCC * beta_BNHC[..., None, :], 2, 3)
  return w.reshape(B, P, H, K), tb.reshape(B, P, H, C)


class _Packed(NamedTuple):
  """Per-token arrays of packed rows (padded to P): kernel inputs and the masks behind them."""
  pos_BP: jax.Array           # position inside the document, -1 at padding
  doc_BP: jax.Array
  read_BXP: jax.Array         # stream x read here (read weight rho = lam of its level x mask)
  wm_BXP: jax.Array           # stream x written here (and no reset after it in the chunk)
  keep_BXP: jax.Array         # no reset of stream x in this token's chunk


def _packed_masks(segment_ids_BT, P, levels, C, t0_B=None):
  """_Packed of the rows (hierarchy.level_stream_masks; resets inside a chunk as in
  delta.chunked_recurrence: a token reads a stream only before the first reset of its chunk and
  writes it only after the last); t0_B: the first document's positions start there."""
  B, T = segment_ids_BT.shape
  lay = delta.layout_of(segment_ids_BT, B, T, t0_B, P)
  streams = _streams(levels, C, P, True, t0_B is not None)[1]
  if levels is None:
    real = lay.real_BT[None]
    reset, write, read = lay.start_BT[None], real, real
  else:
    reset, write, read = hierarchy.level_stream_masks(lay.pos_BT, lay.real_BT, streams)
  chunks = lambda x: x.reshape(x.shape[:-1] + (P // C, C))
  rc = jnp.cumsum(chunks(reset).astype(jnp.int32), axis=-1)
  flat = lambda x: x.reshape(x.shape[:-2] + (P,))
  f32 = jnp.float32
  to_B = lambda x: jnp.moveaxis(flat(x).astype(f32), 0, 1)
  return _Packed(jnp.where(lay.real_BT, lay.pos_BT, -1), lay.doc_BT,
                 to_B(chunks(read) & (rc == 0)), to_B(chunks(write) & (rc == rc[..., -1:])),
                 to_B(jnp.broadcast_to(rc[..., -1:] == 0, rc.shape)))


def _rho(lam_BPHL, packed, st, heads):
  """rho_BHXP = lam of each stream's level (1 for plain GDN) x its read mask."""
  read_BHXP = packed.read_BXP[:, None]
  if lam_BPHL is None:
    B, _, X, P = read_BHXP.shape
    return jnp.broadcast_to(read_BHXP, (B, heads, X, P))
  P = lam_BPHL.shape[1]
  streams = list(_streams(st.levels, st.chunk_size, P, True, st.offset)[1])
  lam_BHXP = jnp.transpose(lam_BPHL[..., streams].astype(jnp.float32), (0, 2, 3, 1))
  return lam_BHXP * read_BHXP


def _prep(q, k, v, g, beta, lam, packed, st):
  """The parallel per-chunk part in XLA (padded arrays, fp32), differentiated for the backward:
  the intra-chunk output (Aeff o M) V and the inter-chunk operands qt = e^G q - (q k^T o D) W,
  k2 = e^{G_C - G} k, W, U = T_g diag(beta) V and tb = T_g diag(beta) (per head, [B, P, H, *]).
  M: aligned, the levels inside a chunk (causal for GDN); packed, pairs of one document weighted
  by the level of their document positions."""
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  N = P // C
  f32 = jnp.float32
  ein = functools.partial(jnp.einsum, precision=HIGHEST, preferred_element_type=f32)
  w_BPHK, tb_BPHC = _wy(k, g, beta, C)
  heads = lambda x: delta.expand_groups(x, H).astype(f32).reshape(B, N, C, H, K)
  q_BNCHK, k_BNCHK = heads(q), heads(k)
  v_BNCHV = v.astype(f32).reshape(B, N, C, H, V)
  G_BNCH = jnp.cumsum(g.astype(f32).reshape(B, N, C, H), axis=2)
  G_BNHC = jnp.moveaxis(G_BNCH, 2, 3)
  causal = jnp.tril(jnp.ones((C, C), bool))
  a_BNHTS = ein('bnthk,bnshk->bnhts', q_BNCHK, k_BNCHK) * jnp.exp(
      jnp.where(causal, G_BNHC[..., :, None] - G_BNHC[..., None, :], -jnp.inf))
  tb_BNHTS = jnp.moveaxis(tb_BPHC.reshape(B, N, C, H, C), 3, 2)
  w_BNCHK = w_BPHK.reshape(B, N, C, H, K)
  qt = q_BNCHK * jnp.exp(G_BNCH)[..., None] - ein('bnhts,bnshk->bnthk', a_BNHTS, w_BNCHK)
  k2 = k_BNCHK * jnp.exp(G_BNCH[:, :, -1:] - G_BNCH)[..., None]
  u = ein('bnhts,bnshv->bnthv', tb_BNHTS, v_BNCHV)
  aeff_BNHTS = ein('bnhts,bnhsu->bnhtu', a_BNHTS, tb_BNHTS)     # lower triangular
  intra_levels = _streams(st.levels, C, P, packed is not None, st.offset)[0]
  if packed is None:
    idx = jnp.arange(C)
    lvl_BNTS = jnp.broadcast_to(hierarchy.level_index(idx[:, None], idx[None, :]), (B, N, C, C))
  else:
    lay = hierarchy.DocumentLayout(packed.pos_BP >= 0, None, packed.doc_BP,
                                   jnp.maximum(packed.pos_BP, 0), None)
    lvl_BNTS = delta.chunk_pairs(     # -1: not a causal pair of one document
        lambda pos, doc, real: hierarchy.pair_levels(pos, doc, real, C), lay, C)
  if lam is None:
    aeff_BNHTS = aeff_BNHTS * (lvl_BNTS >= 0)[:, :, None]
  else:
    lam_BNHCL = jnp.moveaxis(lam[..., :intra_levels].astype(f32).reshape(B, N, C, H, -1), 3, 2)
    aeff_BNHTS = aeff_BNHTS * ein('bnhtl,bntsl->bnhts', lam_BNHCL,
                                  jax.nn.one_hot(lvl_BNTS, intra_levels, dtype=f32))
  intra = ein('bnhts,bnshv->bnthv', aeff_BNHTS, v_BNCHV)
  flat = lambda x: x.reshape((B, P) + x.shape[3:])
  return flat(intra), flat(qt), flat(k2), w_BPHK, flat(u), tb_BPHC


def _scan_forward(q, k, v, g, beta, lam, s0, packed, st, with_states):
  """gdn_scan over batch slices: (o, states or None, final or None); s0: initial stream states
  [B, H, X, K, V] or None."""
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  w_BPHK, tb_BPHC = _wy(k, g, beta, C)
  g_BHP, lam_BHLP = gate_layouts(g, lam)
  masks = None if packed is None else (
      packed.pos_BP, packed.doc_BP, _rho(lam, packed, st, H), packed.wm_BXP,
      packed.keep_BXP)
  cfg = st.config
  fn = functools.partial(gdn_scan, chunk_size=C, levels=st.levels, all_levels=st.offset,
                         with_states=with_states, with_final=st.final_state, out_dtype=v.dtype, block_v=cfg.block_v,
                         num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                         interpret=st.interpret)
  X = len(_streams(st.levels, C, P, packed is not None, st.offset)[1])
  # the stored states (backward only) are the largest array: X x K x V floats per chunk and head
  per_row = P * H * max(K, V, C, 0 if lam is None else lam.shape[-1], X,
                       X * K * V // C if with_states else 0)
  outs = in_row_batches(lambda *a: fn(*a[:7], a[8:] if packed is not None else None, a[7]),
                        (q, k, w_BPHK, tb_BPHC, v, g_BHP, lam_BHLP, s0) + (masks or ()),
                        per_row, f'pallas GDN kernel (T={P}, heads={H})')
  outs = list(outs) if isinstance(outs, tuple) else [outs]
  o = outs.pop(0)
  states = outs.pop(0) if with_states and X > 0 else None
  return o, states, (outs.pop(0) if st.final_state else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _mixer(q_BPGK, k_BPGK, v_BPHV, g_BPH, beta_BPH, lam_BPHL, s0_BHXKV, packed, st):
  """Padded inputs (P = whole chunks, power-of-two feature axes, padding zeroed, q scaled) and
  initial stream states (or None) -> (o_BPHV, final stream states or None); packed: a _Packed or
  None (aligned). Backward: gdn_scan_bwd and the vjp of _prep (module docstring)."""
  o, _, final = _scan_forward(q_BPGK, k_BPGK, v_BPHV, g_BPH, beta_BPH, lam_BPHL, s0_BHXKV, packed,
                              st, False)
  return o, final


def _mixer_fwd(q, k, v, g, beta, lam, s0, packed, st):
  o, states, final = _scan_forward(q, k, v, g, beta, lam, s0, packed, st, True)
  return (o, final), (q, k, v, g, beta, lam, s0 is not None, packed, states)


def _mixer_bwd(st, res, cotangents):
  q, k, v, g, beta, lam, with_s0, packed, states = res
  do_BPHV, dfinal = cotangents
  with_state_grads = with_s0 or st.final_state
  if with_state_grads and dfinal is None:
    X, K, V = states.shape[2], q.shape[-1], v.shape[-1]
    dfinal = jnp.zeros(states.shape[:2] + (X, K, V), jnp.float32)
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  outs, vjp = jax.vjp(lambda *a: _prep(*a, packed, st), q, k, v, g, beta, lam)
  _, qt, k2, w, u, tb = outs
  do = do_BPHV.astype(jnp.float32)
  f32 = jnp.float32
  dg_BPH = jnp.zeros((B, P, H), f32)
  dlam = None if lam is None else jnp.zeros(lam.shape, f32)
  dqt, dk2, dw, du, dtb = (jnp.zeros_like(x) for x in (qt, k2, w, u, tb))
  dv_inter = jnp.zeros(v.shape, f32)
  ds0 = None
  if states is not None:
    g_BHP, lam_BHLP = gate_layouts(g, lam)
    cfg = st.config
    fn = functools.partial(gdn_scan_bwd, chunk_size=C, levels=st.levels, all_levels=st.offset,
                           mm_dtype=q.dtype,
                           block_v=cfg.block_v, num_warps=cfg.num_warps,
                           num_stages=cfg.num_stages, interpret=st.interpret)
    J = V // min(cfg.block_v, V)
    X = states.shape[2]
    per_row = P * H * max(J * K, J * C, V, J * X, X * K * V // C)
    with_lam = (1,) if lam is not None else ()
    with_dinit = (0,) if with_state_grads else ()
    name = f'pallas GDN backward kernel (T={P}, heads={H})'
    if packed is None:
      outs = in_row_batches(lambda *a: fn(*a[:8], None, None, None, a[8]),
                            (qt, k2, w, u, do, g_BHP, states, lam_BHLP, dfinal), per_row, name,
                            out_axes=(1, 1, 1, 0, 1) + with_lam + with_dinit)
      du = outs[3]
      dg_part, drho = outs[4], outs[5] if lam is not None else None
    else:
      masks = (packed.pos_BP, packed.doc_BP, _rho(lam, packed, st, H), packed.wm_BXP,
               packed.keep_BXP)
      outs = in_row_batches(
          lambda *a: fn(*a[:7], None, a[7:12], a[12], a[13], a[14]),
          (qt, k2, w, None, do, g_BHP, states) + masks + (tb, v, dfinal), per_row, name,
          out_axes=(1, 1, 1, 1, 0, 1) + with_lam + with_dinit)
      dtb, dv_inter = jnp.sum(outs[3], axis=0), outs[4]
      dg_part, drho = outs[5], outs[6] if lam is not None else None
    ds0 = outs[-1] if with_s0 else None
    dqt, dk2, dw = (jnp.sum(x, axis=0) for x in outs[:3])
    dg_BPH = jnp.moveaxis(jnp.sum(dg_part, axis=0), 1, 2)
    if lam is not None:
      drho_BPHX = jnp.transpose(jnp.sum(drho, axis=0), (0, 3, 1, 2))
      if packed is None:
        lo = C.bit_length()
        dlam = dlam.at[..., lo:lo + X].set(drho_BPHX)
      else:
        streams = list(_streams(st.levels, C, P, True, st.offset)[1])
        read_BPX = jnp.moveaxis(packed.read_BXP, 1, 2)
        dlam = dlam.at[..., streams].set(drho_BPHX * read_BPX[:, :, None])
  dq, dk, dv, dg, dbeta, dlam_intra = vjp((do, dqt, dk2, dw, du, dtb))
  dv = (dv.astype(f32) + dv_inter).astype(v.dtype)
  dg = (dg + dg_BPH).astype(g.dtype)
  if lam is not None:
    dlam = (dlam_intra + dlam).astype(lam.dtype)
  none = None if packed is None else _Packed(*(None,) * len(packed))
  return dq, dk, dv, dg, dbeta, dlam, ds0, none


_mixer.defvjp(_mixer_fwd, _mixer_bwd)


def _kernel_path(q, k, v, g, beta, lam, s0_BHXKV, t0_B, segment_ids_BT, packed, st):
  """Pads to whole chunks and power-of-two feature axes, zeroes padding, runs the kernels
  (packed: with the document masks of segment_ids_BT, positions from t0_B). s0_BHXKV: initial
  stream states or None. Returns (o_BTHV, final stream states [B, H, X, K, V] or None)."""
  T, K = q.shape[1], q.shape[3]
  V = v.shape[3]
  Kp, Vp = pow2(K), pow2(V)
  (q, k, v, g, beta, lam), _ = padded_inputs(
      [q * st.scale, k, v, g, beta, lam], segment_ids_BT, st.chunk_size,
      [Kp, Kp, Vp, None, None, None])
  masks = (_packed_masks(segment_ids_BT, g.shape[1], st.levels, st.chunk_size, t0_B) if packed
           else None)
  s0 = None if s0_BHXKV is None else jnp.pad(
      s0_BHXKV.astype(jnp.float32), ((0, 0),) * 3 + ((0, Kp - K), (0, Vp - V)))
  o_BPHV, final = _mixer(q, k, v, g, beta, lam, s0, masks, st)
  return o_BPHV[:, :T, :, :V], None if final is None else final[..., :K, :V]


@functools.partial(jax.jit, static_argnames=('st',))
def _run(q, k, v, g, beta, lam, s0_BHXKV, t0_B, segment_ids_BT, st):
  """(o_BTHV, final stream states or None) of the kernels. Log-linear states take the packed
  kernels, whose streams cover every level >= 1 (the aligned ones keep the levels inside a chunk
  in no state), and with an initial state (st.offset) positions from t0_B."""
  every_level = st.levels is not None and (st.final_state or st.offset)
  if every_level and segment_ids_BT is None:
    segment_ids_BT = hierarchy.dense_segment_ids(*v.shape[:2])
  path = functools.partial(_kernel_path, q, k, v, g, beta, lam, s0_BHXKV, t0_B, segment_ids_BT)
  if segment_ids_BT is None:
    return path(False, st)
  # Rows of one document from position 0 (what the trainer passes for unpacked data) take the
  # aligned kernels; packed rows the packed ones (document masks, a stream per level).
  o, final = path(True, st) if every_level else lax.cond(
      one_document_per_row(segment_ids_BT), lambda: path(False, st), lambda: path(True, st))
  (o,) = delta.sanitize(segment_ids_BT > 0, o)
  return o, final


def gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, *, initial_state_BHKV=None,
                segment_ids_BT=None, chunk_size=64, scale=1.0, return_final_state=False,
                interpret=False, config=None):
  """Gated DeltaNet (lloglin.ops.delta.gdn_chunked) through the Pallas kernels, initial and
  final states included; chunk_size < 16 runs the XLA form (module docstring).
  """
  checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                          beta_BTH=beta_BTH, segment_ids_BT=segment_ids_BT,
                          initial_state_BHKV=initial_state_BHKV, chunk_size=chunk_size)
  if chunk_size < 16:
    return delta.gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH,
                             initial_state_BHKV=initial_state_BHKV, segment_ids_BT=segment_ids_BT,
                             chunk_size=chunk_size, scale=scale,
                             return_final_state=return_final_state)
  B, _, H, V = v_BTHV.shape
  st = _Static(chunk_size, float(scale), None, interpret,
               launch_config(config, GDN_CONFIG, B * H, V), bool(return_final_state))
  s0 = None if initial_state_BHKV is None else initial_state_BHKV[:, :, None]
  o, final = _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, None, s0, None, segment_ids_BT, st)
  return (o, final[:, :, 0]) if return_final_state else o




def loglinear_gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *, initial_state=None,
                          segment_ids_BT=None, chunk_size=64, scale=1.0, return_final_state=False,
                          interpret=False, config=None):
  """Log-linear Gated DeltaNet (lloglin.ops.loglinear.loglinear_gdn_chunked) through the Pallas
  kernels, initial and final FenwickStates included (the packed kernels: a stream per level,
  positions continuing the initial state's t_B). chunk_size < 16 and T > 2^(L-1) run the XLA
  form (module docstring).
  """
  checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                          beta_BTH=beta_BTH, lam_BTHL=lam_BTHL, segment_ids_BT=segment_ids_BT,
                          initial_state=initial_state, chunk_size=chunk_size)
  T, L = v_BTHV.shape[1], lam_BTHL.shape[-1]
  if chunk_size < 16 or T > hierarchy.capacity(L):
    return ops_loglinear.loglinear_gdn_chunked(
        q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, initial_state=initial_state,
        segment_ids_BT=segment_ids_BT, chunk_size=chunk_size, scale=scale,
        return_final_state=return_final_state)
  B, _, H, V = v_BTHV.shape
  st = _Static(chunk_size, float(scale), L, interpret,
               launch_config(config, LOGLINEAR_GDN_CONFIG, B * H, V), bool(return_final_state),
               initial_state is not None)
  s0 = t0_B = None
  if initial_state is not None:   # the streams after position t0 - 1; level 0 is never read
    t0_B = jnp.asarray(initial_state.t_B, jnp.int32)
    s0 = jnp.moveaxis(hierarchy.fenwick_to_level_streams(initial_state.S_BHLKV, t0_B)[1:], 0, 2)
  o, streams_BHXKV = _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, s0, t0_B,
                          segment_ids_BT, st)
  if t0_B is None and not return_final_state:
    return o
  lay = delta.layout_of(segment_ids_BT, B, T, t0_B)
  state = (_fenwick_state(streams_BHXKV, k_BTGK, v_BTHV, beta_BTH, lay, L)
           if return_final_state else None)
  o, state = ops_loglinear.nan_past_capacity(o, state, lay, L)   # positions past the levels
  return (o, state) if return_final_state else o


def _fenwick_state(streams_BHXKV, k_BTGK, v_BTHV, beta_BTH, lay, levels):
  """The FenwickState after the sequence from the packed kernels' final streams (levels 1 ..
  X): level 0's stream, reset and written at every token, holds beta k v^T of the last token;
  levels above X are empty (hierarchy.level_streams_to_fenwick, as the XLA form)."""
  B, T, H, _ = v_BTHV.shape
  last_B = T - 1 - jnp.argmax(lay.real_BT[:, ::-1], axis=1)     # 0 for a row of padding only
  pick = lambda x: jnp.take_along_axis(x, last_B.reshape((B, 1) + (1,) * (x.ndim - 2)), 1)[:, 0]
  real_B = jnp.any(lay.real_BT, axis=1)
  k_BHK = pick(delta.expand_groups(k_BTGK, H)).astype(jnp.float32)
  v_BHV = pick(v_BTHV).astype(jnp.float32)
  beta_BH = jnp.where(real_B[:, None], pick(beta_BTH).astype(jnp.float32), 0)
  level0_BHKV = delta.outer_write(k_BHK, v_BHV, beta_BH, jnp.float32)
  X = streams_BHXKV.shape[2]
  S_LBHKV = jnp.concatenate([level0_BHKV[None], jnp.moveaxis(streams_BHXKV, 2, 0),
                             jnp.zeros((levels - 1 - X,) + level0_BHKV.shape, jnp.float32)])
  return hierarchy.FenwickState(hierarchy.level_streams_to_fenwick(S_LBHKV, lay.count_B),
                                lay.count_B)
