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

Backward (jax.custom_vjp). The forward kernel also stores every stream's fp32 state at every
chunk start (N x K x V floats per head and stream). A reverse Pallas scan (`gdn_scan_bwd`) carries
dS_x and gives the cotangents of qt, k2, W, U, of the chunk decay e^{G_C} (-> dg) and of rho
(-> dlam of the stream levels); with dS = dS_x(n+1) and S = S_x(n):

  dS_x(n) = qt^T (rho o dO) + keep (e^{G_C} dS - W^T k2 dS),  dqt = (rho o dO) S^T,
  dk2 = (write U - keep W S) dS^T,  dW = -keep k2 dS S^T,  dU = write k2 dS,
  d e^{G_C} = keep <S, dS>.

Those and dO (for the intra part) go through jax.vjp of `_prep`, the parallel per-chunk part in
XLA (intra output, qt, k2, W, U; UT transform included), to the gradients of q, k, v, g, beta, lam.

Served by the kernels: segment_ids_BT None, or every row one document from position 0 followed by
padding (decided at run time with lax.cond; the trainer passes such ids for unpacked data);
chunk_size >= 16. Packed documents (several per row) run the XLA form, forward and backward,
inside that lax.cond; initial states, final states, chunk_size < 16 and T beyond the capacity of
the L levels run the XLA form from the start, so no argument is ever silently ignored. Feature
axes are zero-padded to powers of two (>= 16) and T to whole chunks; batches whose arrays would
reach 2^31 elements are split (pallas_kernels.loglinear.common). Launch defaults are the Mamba-2
kernels' (KernelConfig): these kernels have not been compiled, checked or timed on a GPU yet.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from lloglin.ops import _checks
from lloglin.ops import delta
from lloglin.ops import hierarchy
from lloglin.ops import loglinear as ops_loglinear
from pallas_kernels.loglinear.common import (KernelConfig, in_row_batches, one_document_per_row,
                                             pow2)
from pallas_kernels.loglinear.kernel import _dot, _level_masks

__all__ = ['gdn_chunked', 'loglinear_gdn_chunked', 'gdn_scan']

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


def _fwd_kernel(*refs, C, N, intra_levels, streams, lam_levels, with_states, mm_dtype):
  refs = list(refs)
  q_ref, k_ref, w_ref, tb_ref, v_ref, g_ref = refs[:6]
  lam_ref = refs[6] if lam_levels else None
  o_ref = refs[-2] if with_states else refs[-1]
  s_ref = refs[-1] if with_states else None
  K, BV = q_ref.shape[-1], v_ref.shape[-1]
  lo = C.bit_length()                        # level of chunk bit x is lo + x
  row = lax.broadcasted_iota(jnp.int32, (C, C), 0)
  col = lax.broadcasted_iota(jnp.int32, (C, C), 1)
  causal = row >= col
  masks = _level_masks(row ^ col, intra_levels) if lam_levels else None

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
    u = _dot(tb, v, mm_dtype)
    if with_states:
      for x, S in enumerate(states):
        s_ref[x, pl.ds(pl.multiple_of(c * K, K), K), :] = S
    if not lam_levels:
      (S,) = states
      vn = u - _dot(w, S, mm_dtype)
      out = _dot(qe, S, mm_dtype) + _dot(a, vn, mm_dtype)
      new_states = (S * jnp.exp(gs) + _dot(k2, vn, mm_dtype, (0, 0)),)
    else:
      lam = [lam_ref[l, sl] for l in range(lam_levels)]
      wl = jnp.zeros((C, C), jnp.float32)
      for l, mask in enumerate(masks):
        wl = wl + jnp.where(mask, lam[l][:, None], 0.0)
      out = _dot(_dot(a, tb, mm_dtype) * wl, v, mm_dtype)    # (Aeff o M) V
      ku = _dot(k2, u, mm_dtype, (0, 0))
      new_states = []
      for S, lv in zip(states, streams):
        read, keep, write = _flags(c, lv, lo)
        ws = _dot(w, S, mm_dtype)

        def do_read(S=S, ws=ws, lv=lv):
          return (_dot(qe, S, mm_dtype) - _dot(a, ws, mm_dtype)) * lam[lv][:, None]

        out = out + lax.cond(read, do_read, lambda: jnp.zeros((C, BV), jnp.float32))
        moved = S * jnp.exp(gs) - _dot(k2, ws, mm_dtype, (0, 0))
        new_states.append(_where(keep, moved) + _where(write, ku))
      new_states = tuple(new_states)
    o_ref[sl, :] = out.astype(o_ref.dtype)
    return new_states

  init = tuple(jnp.zeros((K, BV), jnp.float32) for _ in streams)
  lax.fori_loop(0, N, body, init)


def _bwd_kernel(*refs, C, N, streams, lam_levels, mm_dtype):
  """Reverse chunk scan: the transpose of the inter-chunk part (module docstring, Backward)."""
  refs = list(refs)
  qt_ref, k2_ref, w_ref, u_ref, do_ref, g_ref, s_ref = refs[:7]
  lam_ref = refs[7] if lam_levels else None
  dqt_ref, dk2_ref, dw_ref, du_ref, dg_ref = refs[7 + bool(lam_levels):12 + bool(lam_levels)]
  dlam_ref = refs[-1] if lam_levels else None
  K, BV = qt_ref.shape[-1], u_ref.shape[-1]
  lo = C.bit_length()

  def body(i, dstates):
    c = N - 1 - i
    sl = pl.ds(pl.multiple_of(c * C, C), C)
    qt, k2, w, u = qt_ref[sl, :], k2_ref[sl, :], w_ref[sl, :], u_ref[sl, :]
    do = do_ref[sl, :].astype(jnp.float32)
    gam = jnp.exp(jnp.sum(g_ref[sl].astype(jnp.float32)))
    dqt = jnp.zeros((C, K), jnp.float32)
    dk2 = jnp.zeros((C, K), jnp.float32)
    dw = jnp.zeros((C, K), jnp.float32)
    du = jnp.zeros((C, BV), jnp.float32)
    dgam = jnp.zeros((), jnp.float32)
    new = []
    for x, (E, lv) in enumerate(zip(dstates, streams)):
      read, keep, write = _flags(c, lv, lo)
      S = s_ref[x, pl.ds(pl.multiple_of(c * K, K), K), :]

      def do_read(S=S, lv=lv):               # (dqt, dS from the read) of this stream
        r = do if lv is None else do * lam_ref[lv, sl][:, None]
        return _dot(r, S, mm_dtype, (1, 1)), _dot(qt, r, mm_dtype, (0, 0))

      if lv is None:
        dqt_x, dS_read = do_read()
      else:
        dqt_x, dS_read = lax.cond(read, do_read, lambda: (jnp.zeros((C, K), jnp.float32),
                                                          jnp.zeros((K, BV), jnp.float32)))
        dlam_ref[x, sl] = _where(read, jnp.sum(do * _dot(qt, S, mm_dtype), axis=1))
      dqt = dqt + dqt_x
      kE = _dot(k2, E, mm_dtype)
      wS = _dot(w, S, mm_dtype)
      dk2 = dk2 + _dot(_where(write, u) - _where(keep, wS), E, mm_dtype, (1, 1))
      dw = dw - _where(keep, _dot(kE, S, mm_dtype, (1, 1)))
      du = du + _where(write, kE)
      dgam = dgam + _where(keep, jnp.sum(S * E))
      new.append(dS_read + _where(keep, gam * E - _dot(w, kE, mm_dtype, (0, 0))))
    dqt_ref[sl, :] = dqt
    dk2_ref[sl, :] = dk2
    dw_ref[sl, :] = dw
    du_ref[sl, :] = du
    dg_ref[sl] = jnp.full((C,), gam * dgam, jnp.float32)
    return tuple(new)

  init = tuple(jnp.zeros((K, BV), jnp.float32) for _ in streams)
  lax.fori_loop(0, N, body, init)


def _streams(levels, C, P):
  """(intra_levels, streams, lam_levels) of a length-P scan: plain GDN (levels None) has one
  always-on stream; log-linear has the levels < log2 C + 1 inside chunks and one stream per level
  above, up to the levels P positions reach."""
  if levels is None:
    return 1, (None,), 0
  lo = C.bit_length()
  hi = min(levels, (P - 1).bit_length() + 1)
  return min(lo, hi), tuple(range(lo, hi)), hi


def gdn_scan(q_BPGK, k_BPGK, w_BPHK, tb_BPHC, v_BPHV, g_BHP, lam_BHLP=None, *, chunk_size,
             levels=None, with_states=False, out_dtype=jnp.float32, block_v=32, num_warps=8,
             num_stages=2, interpret=False):
  """The forward chunk scan of the module docstring over P = N * chunk_size padded tokens
  (positions aligned with the hierarchy), feature axes powers of two >= 16. q/k: G groups (head h
  reads h // (H // G)), already scaled; w and tb = T_g diag(beta) (rows t, columns s of its
  chunk): per head, from `_wy`. levels: the L of lam (hierarchy on; lam_BHLP holds at least the
  levels a length-P sequence reaches) or None (plain GDN).
  Returns o_BPHV, and with_states also the fp32 state of every stream at every chunk start,
  states_BHXMV (M = N * K, chunk n at rows n K .. n K + K - 1)."""
  B, P, G, K = q_BPGK.shape
  H, V = v_BPHV.shape[2:]
  C = chunk_size
  R = H // G
  BV = min(block_v, V)
  intra_levels, streams, lam_levels = _streams(levels, C, P)
  in_specs = [pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h // R, 0))] * 2 + [
      pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h, 0)),
      pl.BlockSpec((None, P, None, C), lambda b, h, j: (b, 0, h, 0)),
      pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j)),
      pl.BlockSpec((None, None, P), lambda b, h, j: (b, h, 0))]
  args = [q_BPGK, k_BPGK, w_BPHK, tb_BPHC, v_BPHV, g_BHP]
  if lam_levels:
    in_specs.append(pl.BlockSpec((None, None, lam_levels, P), lambda b, h, j: (b, h, 0, 0)))
    args.append(lam_BHLP[:, :, :lam_levels])
  X = len(streams)
  with_states = with_states and X > 0
  out_specs = [pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j))]
  out_shape = [jax.ShapeDtypeStruct((B, P, H, V), out_dtype)]
  if with_states:
    M = P // C * K
    out_specs.append(pl.BlockSpec((None, None, X, M, BV), lambda b, h, j: (b, h, 0, 0, j)))
    out_shape.append(jax.ShapeDtypeStruct((B, H, X, M, V), jnp.float32))
  kernel = functools.partial(_fwd_kernel, C=C, N=P // C, intra_levels=intra_levels,
                             streams=streams, lam_levels=lam_levels, with_states=with_states,
                             mm_dtype=jnp.result_type(q_BPGK.dtype, k_BPGK.dtype))
  outs = pl.pallas_call(
      kernel, grid=(B, H, V // BV), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret, name='gdn_chunk_scan' if levels is None else 'loglinear_gdn_chunk_scan',
  )(*args)
  return tuple(outs) if with_states else outs[0]


def gdn_scan_bwd(qt_BPHK, k2_BPHK, w_BPHK, u_BPHV, do_BPHV, g_BHP, states_BHXMV, lam_BHLP=None, *,
                 chunk_size, levels=None, mm_dtype=jnp.float32, block_v=32, num_warps=8,
                 num_stages=2, interpret=False):
  """Reverse chunk scan: cotangents of the inter-chunk operands (module docstring, Backward).

  Returns dqt, dk2, dw as [J, B, P, H, K] (partial sums over the J feature blocks of V), du_BPHV,
  dg_JBHP (the chunk-decay term) and, with levels, dlam_JBHXP of the X stream levels."""
  B, P, H, K = qt_BPHK.shape
  V = u_BPHV.shape[-1]
  C = chunk_size
  BV = min(block_v, V)
  J = V // BV
  _, streams, lam_levels = _streams(levels, C, P)
  X, M = states_BHXMV.shape[2:4]
  tok = lambda width: pl.BlockSpec((None, P, None, width), lambda b, h, j: (b, 0, h, 0))
  blk = pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j))
  in_specs = [tok(K), tok(K), tok(K), blk, blk,
              pl.BlockSpec((None, None, P), lambda b, h, j: (b, h, 0)),
              pl.BlockSpec((None, None, X, M, BV), lambda b, h, j: (b, h, 0, 0, j))]
  args = [qt_BPHK, k2_BPHK, w_BPHK, u_BPHV, do_BPHV, g_BHP, states_BHXMV]
  if lam_levels:
    in_specs.append(pl.BlockSpec((None, None, lam_levels, P), lambda b, h, j: (b, h, 0, 0)))
    args.append(lam_BHLP[:, :, :lam_levels])
  part = pl.BlockSpec((None, None, P, None, K), lambda b, h, j: (j, b, 0, h, 0))
  out_specs = [part, part, part, blk, pl.BlockSpec((None, None, None, P),
                                                   lambda b, h, j: (j, b, h, 0))]
  f32 = jnp.float32
  out_shape = [jax.ShapeDtypeStruct((J, B, P, H, K), f32)] * 3 + [
      jax.ShapeDtypeStruct((B, P, H, V), f32), jax.ShapeDtypeStruct((J, B, H, P), f32)]
  if lam_levels:
    out_specs.append(pl.BlockSpec((None, None, None, X, P), lambda b, h, j: (j, b, h, 0, 0)))
    out_shape.append(jax.ShapeDtypeStruct((J, B, H, X, P), f32))
  kernel = functools.partial(_bwd_kernel, C=C, N=P // C, streams=streams, lam_levels=lam_levels,
                             mm_dtype=mm_dtype)
  return tuple(pl.pallas_call(
      kernel, grid=(B, H, J), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name='gdn_chunk_scan_bwd' if levels is None else 'loglinear_gdn_chunk_scan_bwd',
  )(*args))


# ------------------------------------------------------------------------------------------------
# Wrapper


class _Static(NamedTuple):
  chunk_size: int
  scale: float
  levels: int | None          # None: plain GDN
  interpret: bool
  config: KernelConfig


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


def _layouts(g_BPH, lam_BPHL):
  g_BHP = jnp.moveaxis(g_BPH.astype(jnp.float32), 1, 2)
  lam_BHLP = None if lam_BPHL is None else jnp.transpose(lam_BPHL.astype(jnp.float32), (0, 2, 3, 1))
  return g_BHP, lam_BHLP


def _prep(q, k, v, g, beta, lam, st):
  """The parallel per-chunk part in XLA (padded arrays, fp32), differentiated for the backward:
  the intra-chunk output (Aeff o M) V and the inter-chunk operands qt = e^G q - (q k^T o D) W,
  k2 = e^{G_C - G} k, W and U = T_g diag(beta) V (per head, [B, P, H, *])."""
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
  if lam is not None:
    intra_levels = _streams(st.levels, C, P)[0]
    idx = jnp.arange(C)
    onehot_TSL = jax.nn.one_hot(hierarchy.level_index(idx[:, None], idx[None, :]), intra_levels,
                                dtype=f32)
    lam_BNHCL = jnp.moveaxis(lam[..., :intra_levels].astype(f32).reshape(B, N, C, H, -1), 3, 2)
    aeff_BNHTS = aeff_BNHTS * ein('bnhtl,tsl->bnhts', lam_BNHCL, onehot_TSL)
  intra = ein('bnhts,bnshv->bnthv', aeff_BNHTS, v_BNCHV)
  flat = lambda x: x.reshape((B, P) + x.shape[3:])
  return flat(intra), flat(qt), flat(k2), w_BPHK, flat(u)


def _scan_forward(q, k, v, g, beta, lam, st, with_states):
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  w_BPHK, tb_BPHC = _wy(k, g, beta, C)
  g_BHP, lam_BHLP = _layouts(g, lam)
  cfg = st.config
  fn = functools.partial(gdn_scan, chunk_size=C, levels=st.levels, with_states=with_states,
                         out_dtype=v.dtype, block_v=cfg.block_v, num_warps=cfg.num_warps,
                         num_stages=cfg.num_stages, interpret=st.interpret)
  X = len(_streams(st.levels, C, P)[1])
  per_row = P * H * max(K, V, C, 0 if lam is None else lam.shape[-1], X * K * V // C)
  return in_row_batches(fn, (q, k, w_BPHK, tb_BPHC, v, g_BHP, lam_BHLP), per_row,
                        f'pallas GDN kernel (T={P}, heads={H})')


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _mixer(q_BPGK, k_BPGK, v_BPHV, g_BPH, beta_BPH, lam_BPHL, st):
  """Padded inputs (P = whole chunks, power-of-two feature axes, padding zeroed, q scaled) ->
  o_BPHV; backward: gdn_scan_bwd and the vjp of _prep (module docstring)."""
  return _scan_forward(q_BPGK, k_BPGK, v_BPHV, g_BPH, beta_BPH, lam_BPHL, st, False)


def _mixer_fwd(q, k, v, g, beta, lam, st):
  out = _scan_forward(q, k, v, g, beta, lam, st, True)
  o, states = out if isinstance(out, tuple) else (out, None)
  return o, (q, k, v, g, beta, lam, states)


def _mixer_bwd(st, res, do_BPHV):
  q, k, v, g, beta, lam, states = res
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  (_, qt, k2, w, u), vjp = jax.vjp(lambda *a: _prep(*a, st), q, k, v, g, beta, lam)
  do = do_BPHV.astype(jnp.float32)
  f32 = jnp.float32
  dg_BPH = jnp.zeros((B, P, H), f32)
  dlam = None if lam is None else jnp.zeros(lam.shape, f32)
  if states is None:                        # no stream: everything is intra-chunk
    dqt = dk2 = dw = jnp.zeros_like(qt)
    du = jnp.zeros_like(u)
  else:
    g_BHP, lam_BHLP = _layouts(g, lam)
    cfg = st.config
    fn = functools.partial(gdn_scan_bwd, chunk_size=C, levels=st.levels, mm_dtype=q.dtype,
                           block_v=cfg.block_v, num_warps=cfg.num_warps,
                           num_stages=cfg.num_stages, interpret=st.interpret)
    J = V // min(cfg.block_v, V)
    per_row = P * H * max(J * K, V, states.shape[2] * K * V // C)
    outs = in_row_batches(fn, (qt, k2, w, u, do, g_BHP, states, lam_BHLP), per_row,
                          f'pallas GDN backward kernel (T={P}, heads={H})',
                          out_axes=(1, 1, 1, 0, 1) + ((1,) if lam is not None else ()))
    dqt, dk2, dw = (jnp.sum(x, axis=0) for x in outs[:3])
    du = outs[3]
    dg_BPH = jnp.moveaxis(jnp.sum(outs[4], axis=0), 1, 2)
    if lam is not None:
      lo = C.bit_length()
      X = states.shape[2]
      dlam = dlam.at[..., lo:lo + X].set(jnp.transpose(jnp.sum(outs[5], axis=0), (0, 3, 1, 2)))
  dq, dk, dv, dg, dbeta, dlam_intra = vjp((do, dqt, dk2, dw, du))
  dg = (dg + dg_BPH).astype(g.dtype)
  if lam is not None:
    dlam = (dlam_intra + dlam).astype(lam.dtype)
  return dq, dk, dv, dg, dbeta, dlam


_mixer.defvjp(_mixer_fwd, _mixer_bwd)


def _kernel_path(q, k, v, g, beta, lam, real_BT, st):
  """Pads to whole chunks and power-of-two feature axes, zeroes padding, runs the kernels."""
  B, T, G, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  P = -(-T // C) * C
  arrays = [q * st.scale, k, v, g, beta] + ([] if lam is None else [lam])
  arrays = [jnp.pad(x, [(0, 0), (0, P - T)] + [(0, 0)] * (x.ndim - 2)) for x in arrays]
  if real_BT is not None:
    arrays = delta.sanitize(jnp.pad(real_BT, ((0, 0), (0, P - T))), *arrays)
  feat = lambda x, d: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, d - x.shape[-1])))
  q, k, v = feat(arrays[0], pow2(K)), feat(arrays[1], pow2(K)), feat(arrays[2], pow2(V))
  o_BPHV = _mixer(q, k, v, arrays[3], arrays[4], None if lam is None else arrays[5], st)
  return o_BPHV[:, :T, :, :V]


def _xla(q, k, v, g, beta, lam, segment_ids_BT, st):
  kw = dict(segment_ids_BT=segment_ids_BT, chunk_size=st.chunk_size, scale=st.scale)
  if lam is None:
    return delta.gdn_chunked(q, k, v, g, beta, **kw)
  return ops_loglinear.loglinear_gdn_chunked(q, k, v, g, beta, lam, **kw)


@functools.partial(jax.jit, static_argnames=('st',))
def _run(q, k, v, g, beta, lam, segment_ids_BT, st):
  if segment_ids_BT is None:
    return _kernel_path(q, k, v, g, beta, lam, None, st)
  # Rows of one document from position 0 (what the trainer passes for unpacked data) take the
  # kernels; packed rows the XLA form.
  real_BT = segment_ids_BT > 0
  o = lax.cond(one_document_per_row(segment_ids_BT),
               lambda: _kernel_path(q, k, v, g, beta, lam, real_BT, st),
               lambda: _xla(q, k, v, g, beta, lam, segment_ids_BT, st))
  (o,) = delta.sanitize(real_BT, o)
  return o


def gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, *, initial_state_BHKV=None,
                segment_ids_BT=None, chunk_size=64, scale=1.0, return_final_state=False,
                interpret=False, config=KernelConfig()):
  """Gated DeltaNet (lloglin.ops.delta.gdn_chunked) through the Pallas kernels.

  initial_state_BHKV, return_final_state, chunk_size < 16 and packed rows run the XLA form
  (module docstring).
  """
  _checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                           beta_BTH=beta_BTH, segment_ids_BT=segment_ids_BT,
                           initial_state_BHKV=initial_state_BHKV, chunk_size=chunk_size)
  if initial_state_BHKV is not None or return_final_state or chunk_size < 16:
    return delta.gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH,
                             initial_state_BHKV=initial_state_BHKV, segment_ids_BT=segment_ids_BT,
                             chunk_size=chunk_size, scale=scale,
                             return_final_state=return_final_state)
  st = _Static(chunk_size, float(scale), None, interpret, config)
  return _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, None, segment_ids_BT, st)


def loglinear_gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *, initial_state=None,
                          segment_ids_BT=None, chunk_size=64, scale=1.0, return_final_state=False,
                          interpret=False, config=KernelConfig()):
  """Log-linear Gated DeltaNet (lloglin.ops.loglinear.loglinear_gdn_chunked) through the Pallas
  kernels.

  initial_state, return_final_state, chunk_size < 16, T > 2^(L-1) and packed rows run the XLA
  form (module docstring).
  """
  _checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                           beta_BTH=beta_BTH, lam_BTHL=lam_BTHL, segment_ids_BT=segment_ids_BT,
                           initial_state=initial_state, chunk_size=chunk_size)
  T, L = v_BTHV.shape[1], lam_BTHL.shape[-1]
  if (initial_state is not None or return_final_state or chunk_size < 16
      or T > hierarchy.capacity(L)):
    return ops_loglinear.loglinear_gdn_chunked(
        q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, initial_state=initial_state,
        segment_ids_BT=segment_ids_BT, chunk_size=chunk_size, scale=scale,
        return_final_state=return_final_state)
  st = _Static(chunk_size, float(scale), L, interpret, config)
  return _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, segment_ids_BT, st)
