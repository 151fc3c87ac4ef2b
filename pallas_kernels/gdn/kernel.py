"""The Pallas level-stream scans of chunked log-linear Gated DeltaNet
(docs/algorithms/gdn.md#chunked-form, docs/algorithms/loglinear.md#log-linear-gated-deltanet): the
forward chunk scan `gdn_scan` and the reverse scan `gdn_scan_bwd`. chunked.py launches them (with
the parts named below, `_wy` and `_prep`) behind jax.custom_vjp. (Plain GDN runs chunkwise.py's
kernels instead.)

Forward. Per chunk of C tokens and head (G = in-chunk cumsum of g, D[t, s] = exp(G_t - G_s) for
s <= t, exponents masked before exp), the UT/WY quantities come from one parallel pass (`_wy`:
chunkwise's UT-inverse kernel, then XLA): T_g = (I + strict_lower(diag(beta) (K K^T o D)))^-1,
W = T_g diag(beta e^G) K and T_g diag(beta) (fp32, C per token). One Pallas program per (batch,
head, block of V) then scans the chunks in order, forms U = T_g diag(beta) V and carries fp32
[K, BV] states:

  o = (Aeff o M) V + sum_x rho_x o (qt S_x),  Aeff = (q k^T o D) T_g diag(beta),
  S_x <- keep (e^{G_C} S_x - k2^T W S_x) + write k2^T U

with k2 = e^{G_C - G} o k, qt = e^G o q - (q k^T o D) W, M the level weights lam_t^lvl(t, s) of the
levels inside a chunk and one stream S_x per chunk level x (global level log2 C + 1 + x): read with
rho_x = lam of that level in chunks with bit x set, written in chunks with bit x clear, reset at
every aligned block of 2^(x+1) chunks (the level-parallel masked scans of
docs/algorithms/loglinear.md#chunked-training, as in pallas_kernels.mamba2.kernel).

Packed documents (chunked.py's `_packed_masks`): M pairs tokens of one document by the level of
their positions inside it, and every level >= 1 is a stream with per-token masks computed in XLA
as in lloglin.ops.linear_recurrence.chunked_recurrence: rho (lam x read, only before the first
reset in the chunk), wm (written, only after the last reset) and keep (no reset in the chunk);
each stream writes k2^T T_g diag(beta wm) V. About one stream per level, so packed rows cost more
than aligned ones (not measured).

Backward (jax.custom_vjp). The forward kernel also stores every stream's fp32 state at every
chunk start (N x K x V floats per head and stream: 59 MB per row and head at T = 8192, C = 64,
K = V = 128 with the 7 streams). A reverse Pallas scan (`gdn_scan_bwd`) carries dS_x and gives
the cotangents of qt, k2, W, U, of the chunk decay e^{G_C} (-> dg) and of rho (-> dlam of the
stream levels); with dS = dS_x(n+1) and S = S_x(n):

  dS_x(n) = qt^T (rho o dO) + keep (e^{G_C} dS - W^T k2 dS),  dqt = (rho o dO) S^T,
  dk2 = (write U - keep W S) dS^T,  dW = -keep k2 dS S^T,  dU = write k2 dS,
  d e^{G_C} = keep <S, dS>
(packed: with tb = T_g diag(beta), dtb += k2 dS (wm o V)^T and dV += wm o tb^T k2 dS for dU).

Those and dO (for the intra part) go through jax.vjp of chunked.py's `_prep`, the parallel
per-chunk part (intra output, qt, k2, W, U in XLA; T through chunkwise's kernel and its
transpose), to the gradients of q, k, v, g, beta, lam.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.linear_recurrence import dot, level_masks

__all__ = ['gdn_scan', 'gdn_scan_bwd', 'stream_levels']

HIGHEST = lax.Precision.HIGHEST


# ------------------------------------------------------------------------------------------------
# Kernels


def _flags(c, lv, lo):
  """(read, keep, write) of level stream lv in aligned chunk c (chunk bit x = lv - lo): read in
  chunks with bit x set, written in the others, reset at every block of 2^(x+1) chunks."""
  x = lv - lo
  read = ((c >> x) & 1) == 1
  return read, (c & ((1 << (x + 1)) - 1)) != 0, ~read


def _where(flag, x):
  return jnp.where(flag, x, 0.0)


def _stream_masks(packed, c, x, lv, lo, sl, lam, mask_refs):
  """(rho, read, keep, wm) of stream x in chunk c: rho the per-token read weight, read / keep
  scalar flags, wm the write weight (a flag, or per token when packed)."""
  if not packed:
    read, keep, write = _flags(c, lv, lo)
    return lam[lv], read, keep, write
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
  lam_ref = refs.pop(0)
  n_masks = (2 + 3 * bool(streams)) if packed else 0    # pos, doc [, rho, wm, keep]
  pos_ref, doc_ref, *mask_refs = refs[:n_masks] if packed else (None, None)
  K, BV = q_ref.shape[-1], v_ref.shape[-1]
  lo = C.bit_length()                        # level of chunk bit x is lo + x
  row = lax.broadcasted_iota(jnp.int32, (C, C), 0)
  col = lax.broadcasted_iota(jnp.int32, (C, C), 1)
  causal = row >= col
  aligned_masks = None if packed else level_masks(row ^ col, intra_levels)

  def body(c, states):
    sl = pl.ds(pl.multiple_of(c * C, C), C)
    q, k, w, tb, v = q_ref[sl, :], k_ref[sl, :], w_ref[sl, :], tb_ref[sl, :], v_ref[sl, :]
    g = g_ref[sl].astype(jnp.float32)
    G = jnp.cumsum(g)
    gs = jnp.sum(g)
    a = dot(q, k, mm_dtype, (1, 1)) * jnp.exp(jnp.where(causal, G[:, None] - G[None, :],
                                                         -jnp.inf))
    qe = q.astype(jnp.float32) * jnp.exp(G)[:, None]
    k2 = k.astype(jnp.float32) * jnp.exp(gs - G)[:, None]
    u = None if packed else dot(tb, v, mm_dtype)   # packed: each stream writes its own part
    lam = [lam_ref[l, sl] for l in range(lam_levels)]
    if with_states:
      for x, S in enumerate(states):
        s_ref[x, pl.ds(pl.multiple_of(c * K, K), K), :] = S
    if packed:
      pos, doc = pos_ref[sl], doc_ref[sl]
      real = pos >= 0
      pair = causal & (doc[:, None] == doc[None, :]) & real[:, None] & real[None, :]
      masks = [m & pair for m in level_masks(pos[:, None] ^ pos[None, :], intra_levels)]
    else:
      masks = aligned_masks
    wl = jnp.zeros((C, C), jnp.float32)
    for l, mask in enumerate(masks):
      wl = wl + jnp.where(mask, lam[l][:, None], 0.0)
    out = dot(dot(a, tb, mm_dtype) * wl, v, mm_dtype)    # (Aeff o M) V
    ku = None if packed else dot(k2, u, mm_dtype, (0, 0))
    new_states = []
    for x, (S, lv) in enumerate(zip(states, streams)):
      rho, read, keep, write = _stream_masks(packed, c, x, lv, lo, sl, lam, mask_refs)
      ws = dot(w, S, mm_dtype)

      def do_read(S=S, ws=ws, rho=rho):
        return (dot(qe, S, mm_dtype) - dot(a, ws, mm_dtype)) * rho[:, None]

      out = out + lax.cond(read, do_read, lambda: jnp.zeros((C, BV), jnp.float32))
      moved = S * jnp.exp(gs) - dot(k2, ws, mm_dtype, (0, 0))
      if packed:
        written = dot(k2, dot(tb, v * write[:, None], mm_dtype), mm_dtype, (0, 0))
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
  drho_ref = refs.pop()
  if packed:
    qt_ref, k2_ref, w_ref, tb_ref, v_ref, do_ref, g_ref, s_ref, *mask_refs = refs[:11]
    lam_ref = None
  else:
    qt_ref, k2_ref, w_ref, u_ref, do_ref, g_ref, s_ref = refs[:7]
    lam_ref = refs[7]
    mask_refs = None
  n_in = (11 if packed else 8) + with_state_grads
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
        r = do * rho[:, None]
        return dot(r, S, mm_dtype, (1, 1)), dot(qt, r, mm_dtype, (0, 0))

      dqt_x, dS_read = lax.cond(read, do_read, lambda: (jnp.zeros((C, K), jnp.float32),
                                                        jnp.zeros((K, BV), jnp.float32)))
      drho_ref[x, sl] = _where(read, jnp.sum(do * dot(qt, S, mm_dtype), axis=1))
      dqt = dqt + dqt_x
      kE = dot(k2, E, mm_dtype)
      wS = dot(w, S, mm_dtype)
      if packed:
        vw = v * write[:, None]
        ux = dot(tb, vw, mm_dtype)
        dtb = dtb + dot(kE, vw, mm_dtype, (1, 1))
        dv = dv + dot(tb, kE, mm_dtype, (0, 0)) * write[:, None]
      else:
        ux = _where(write, u)
        du = du + _where(write, kE)
      dk2 = dk2 + dot(ux - _where(keep, wS), E, mm_dtype, (1, 1))
      dw = dw - _where(keep, dot(kE, S, mm_dtype, (1, 1)))
      dgam = dgam + _where(keep, jnp.sum(S * E))
      new.append(dS_read + _where(keep, gam * E - dot(w, kE, mm_dtype, (0, 0))))
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


def stream_levels(levels, C, P, packed=False, all_levels=False):
  """(intra_levels, streams, lam_levels) of a length-P scan over `levels` levels: aligned, the
  levels < log2 C + 1 inside chunks and one stream per level above, up to the levels P positions
  reach (all_levels: positions continue an initial state's, so all L); packed, every level inside
  chunks (document positions) and a stream for every level >= 1 (sources in earlier chunks)."""
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


def gdn_scan(q_BPGK, k_BPGK, w_BPHK, tb_BPHC, v_BPHV, g_BHP, lam_BHLP, masks=None,
             init_BHXKV=None, *, chunk_size, levels, all_levels=False, with_states=False,
             with_final=False, out_dtype=jnp.float32, block_v=32, num_warps=8, num_stages=2,
             interpret=False):
  """The forward chunk scan of the module docstring over P = N * chunk_size padded tokens,
  feature axes powers of two >= 16. q/k: G groups (head h reads h // (H // G)), already scaled; w
  and tb = T_g diag(beta) (rows t, columns s of its chunk): per head, from `_wy`. levels: the L of
  lam (lam_BHLP holds at least the levels a length-P sequence reaches). masks (packed documents;
  None: positions aligned with the hierarchy): (pos_BP (-1 at padding), doc_BP, rho_BHXP, wm_BXP, keep_BXP) from `_packed_masks`.
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
  intra_levels, streams, lam_levels = stream_levels(levels, C, P, packed, all_levels)
  X = len(streams)
  in_specs = [pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h // R, 0))] * 2 + [
      pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h, 0)),
      pl.BlockSpec((None, P, None, C), lambda b, h, j: (b, 0, h, 0)),
      pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j)),
      pl.BlockSpec((None, None, P), lambda b, h, j: (b, h, 0))]
  in_specs.append(pl.BlockSpec((None, None, lam_levels, P), lambda b, h, j: (b, h, 0, 0)))
  args = [q_BPGK, k_BPGK, w_BPHK, tb_BPHC, v_BPHV, g_BHP, lam_BHLP[:, :, :lam_levels]]
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
  name = 'loglinear_gdn' + ('_packed' if packed else '')
  outs = _pallas(kernel, (B, H, V // BV), in_specs, out_specs, out_shape, name + '_chunk_scan',
                 num_warps, num_stages, interpret)(*args)
  return tuple(outs) if with_states or with_final else outs[0]


def gdn_scan_bwd(qt_BPHK, k2_BPHK, w_BPHK, u_BPHV, do_BPHV, g_BHP, states_BHXMV, lam_BHLP=None,
                 masks=None, tb_BPHC=None, v_BPHV=None, dfinal_BHXKV=None, *, chunk_size,
                 levels, all_levels=False, mm_dtype=jnp.float32, block_v=32, num_warps=8,
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
  _, streams, lam_levels = stream_levels(levels, C, P, packed, all_levels)
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
    in_specs.append(pl.BlockSpec((None, None, lam_levels, P), lambda b, h, j: (b, h, 0, 0)))
    args = [qt_BPHK, k2_BPHK, w_BPHK, u_BPHV, do_BPHV, g_BHP, states_BHXMV,
            lam_BHLP[:, :, :lam_levels]]
    out_specs = [part(K)] * 3 + [blk, g_out[0]]
    out_shape = [partial_BPH(K)] * 3 + [jax.ShapeDtypeStruct((B, P, H, V), f32), g_out[1]]
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
  name = 'loglinear_gdn' + ('_packed' if packed else '')
  return tuple(_pallas(kernel, (B, H, J), in_specs, out_specs, out_shape,
                       name + '_chunk_scan_bwd', num_warps, num_stages, interpret)(*args))
