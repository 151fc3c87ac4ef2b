"""Pallas kernels for chunked Gated DeltaNet and log-linear Gated DeltaNet (kernels.md §2.2, §5).

Same signatures and semantics as lloglin.ops.delta.gdn_chunked and
lloglin.ops.loglinear.loglinear_gdn_chunked, plus `interpret` and `config`.

Forward. Per chunk of C tokens and head (G = in-chunk cumsum of g, D[t, s] = exp(G_t - G_s) for
s <= t, exponents masked before exp), the UT/WY quantities come from one parallel XLA pass
(`_wy`): T_g = (I + strict_lower(diag(beta) (K K^T o D)))^-1, W = T_g diag(beta e^G) K and
T_g diag(beta) (fp32, C per token). One Pallas program per (batch, head, block of V) then scans
the chunks in order, forms U = T_g diag(beta) V and carries fp32 [K, BV] states:

  GDN:        v_new = U - W S,  o = (e^G o q) S + (tril(q k^T o D)) v_new,
              S <- e^{G_C} S + (e^{G_C - G} o k)^T v_new
  log-linear: o = (Aeff o M) V, Aeff = (q k^T o D) T_g diag(beta), with M the level weights
              lam_t^lvl(t, s) of the levels inside a chunk, plus, per chunk level x (global level log2 C + 1 + x), one stream
              S_x read (weighted by lam, in chunks with bit x set) as
              o += lam o ((e^G o q) S_x - tril(q k^T o D) (W S_x)), written in chunks with bit x
              clear and reset at every aligned block of 2^(x+1) chunks:
              S_x <- keep (e^{G_C} S_x - K2^T W S_x) + write K2^T U,  K2 = e^{G_C - G} o k
  (the level-parallel masked scans of kernels.md §3.5 b, as in pallas_kernels.loglinear.kernel).

Backward: INTERIM. The custom_vjp backward is jax.vjp of the lloglin.ops XLA chunked form (it
recomputes that forward); there is no Pallas backward kernel yet, so training speed is the XLA
form's plus one Pallas forward.

Served by the kernel: segment_ids_BT None, or every row one document from position 0 followed by
padding (decided at run time with lax.cond; the trainer passes such ids for unpacked data);
chunk_size >= 16. Packed documents (several per row) run the XLA form inside that lax.cond;
initial states, final states, chunk_size < 16 and T beyond the capacity of the L levels run the
XLA form from the start, so no argument is ever silently ignored. Feature axes are zero-padded to
powers of two (>= 16) and T to whole chunks; batches whose arrays would reach 2^31 elements are
split (pallas_kernels.loglinear.common). Launch defaults are the Mamba-2 kernels' (KernelConfig):
this kernel has not been compiled, checked or timed on a GPU yet.
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
# Kernel


def _kernel(*refs, C, N, intra_levels, streams, lam_levels, mm_dtype):
  refs = list(refs)
  q_ref, k_ref, w_ref, tb_ref, v_ref, g_ref = refs[:6]
  lam_ref = refs[6] if lam_levels else None
  o_ref = refs[-1]
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
        x = lv - lo
        read = ((c >> x) & 1) == 1
        keep = (c & ((1 << (x + 1)) - 1)) != 0
        ws = _dot(w, S, mm_dtype)

        def do_read(S=S, ws=ws, lv=lv):
          return (_dot(qe, S, mm_dtype) - _dot(a, ws, mm_dtype)) * lam[lv][:, None]

        out = out + lax.cond(read, do_read, lambda: jnp.zeros((C, BV), jnp.float32))
        moved = S * jnp.exp(gs) - _dot(k2, ws, mm_dtype, (0, 0))
        new_states.append(jnp.where(keep, moved, 0.0) + jnp.where(read, 0.0, ku))
      new_states = tuple(new_states)
    o_ref[sl, :] = out.astype(o_ref.dtype)
    return new_states

  init = tuple(jnp.zeros((K, BV), jnp.float32) for _ in streams)
  lax.fori_loop(0, N, body, init)


def gdn_scan(q_BPGK, k_BPGK, w_BPHK, tb_BPHC, v_BPHV, g_BHP, lam_BHLP=None, *, chunk_size,
             levels=None, out_dtype=jnp.float32, block_v=32, num_warps=8, num_stages=2,
             interpret=False):
  """The chunk scan of the module docstring over P = N * chunk_size padded tokens (positions
  aligned with the hierarchy), feature axes powers of two >= 16. q/k: G groups (head h reads
  h // (H // G)), already scaled; w and tb = T_g diag(beta) (rows t, columns s of its chunk):
  per head, from `_wy`. levels: the L of lam (hierarchy on;
  lam_BHLP holds at least the levels a length-P sequence reaches) or None (plain GDN).
  Returns o_BPHV."""
  B, P, G, K = q_BPGK.shape
  H, V = v_BPHV.shape[2:]
  C = chunk_size
  R = H // G
  BV = min(block_v, V)
  lo = C.bit_length()
  if levels is None:
    intra_levels, streams, lam_levels = 1, (None,), 0
  else:
    hi = min(levels, (P - 1).bit_length() + 1)
    intra_levels, streams, lam_levels = min(lo, hi), tuple(range(lo, hi)), hi
  in_specs = [pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h // R, 0))] * 2 + [
      pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h, 0)),
      pl.BlockSpec((None, P, None, C), lambda b, h, j: (b, 0, h, 0)),
      pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j)),
      pl.BlockSpec((None, None, P), lambda b, h, j: (b, h, 0))]
  args = [q_BPGK, k_BPGK, w_BPHK, tb_BPHC, v_BPHV, g_BHP]
  if lam_levels:
    in_specs.append(pl.BlockSpec((None, None, lam_levels, P), lambda b, h, j: (b, h, 0, 0)))
    args.append(lam_BHLP[:, :, :lam_levels])
  kernel = functools.partial(_kernel, C=C, N=P // C, intra_levels=intra_levels, streams=streams,
                             lam_levels=lam_levels,
                             mm_dtype=jnp.result_type(q_BPGK.dtype, k_BPGK.dtype))
  return pl.pallas_call(
      kernel, grid=(B, H, V // BV), in_specs=in_specs,
      out_specs=pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j)),
      out_shape=jax.ShapeDtypeStruct((B, P, H, V), out_dtype),
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret, name='gdn_chunk_scan' if levels is None else 'loglinear_gdn_chunk_scan',
  )(*args)


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


def _kernel_forward(q, k, v, g, beta, lam, real_BT, st):
  """Pads to whole chunks and power-of-two feature axes, zeroes padding, runs gdn_scan."""
  B, T, G, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  P = -(-T // C) * C
  Kp, Vp = pow2(K), pow2(V)
  arrays = [q * st.scale, k, v, g, beta] + ([] if lam is None else [lam])
  arrays = [jnp.pad(x, [(0, 0), (0, P - T)] + [(0, 0)] * (x.ndim - 2)) for x in arrays]
  if real_BT is not None:
    arrays = delta.sanitize(jnp.pad(real_BT, ((0, 0), (0, P - T))), *arrays)
  feat = lambda x, d: jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, d - x.shape[-1])))
  qp, kp, vp = feat(arrays[0], Kp), feat(arrays[1], Kp), feat(arrays[2], Vp)
  w_BPHK, tb_BPHC = _wy(kp, arrays[3], arrays[4], C)
  g_BHP = jnp.moveaxis(arrays[3].astype(jnp.float32), 1, 2)
  lam_BHLP = None if lam is None else jnp.transpose(arrays[5].astype(jnp.float32), (0, 2, 3, 1))
  cfg = st.config
  fn = functools.partial(gdn_scan, chunk_size=C, levels=st.levels, out_dtype=v.dtype,
                         block_v=cfg.block_v, num_warps=cfg.num_warps,
                         num_stages=cfg.num_stages, interpret=st.interpret)
  per_row = P * H * max(Kp, Vp, C, 0 if lam is None else lam.shape[-1])
  o_BPHV = in_row_batches(fn, (qp, kp, w_BPHK, tb_BPHC, vp, g_BHP, lam_BHLP), per_row,
                          f'pallas GDN kernel (T={T}, heads={H})')
  return o_BPHV[:, :T, :, :V]


def _xla(q, k, v, g, beta, lam, segment_ids_BT, st):
  kw = dict(segment_ids_BT=segment_ids_BT, chunk_size=st.chunk_size, scale=st.scale)
  if lam is None:
    return delta.gdn_chunked(q, k, v, g, beta, **kw)
  return ops_loglinear.loglinear_gdn_chunked(q, k, v, g, beta, lam, **kw)


def _forward(q, k, v, g, beta, lam, segment_ids_BT, st):
  if segment_ids_BT is None:
    return _kernel_forward(q, k, v, g, beta, lam, None, st)
  real_BT = segment_ids_BT > 0
  o = lax.cond(one_document_per_row(segment_ids_BT),
               lambda: _kernel_forward(q, k, v, g, beta, lam, real_BT, st),
               lambda: _xla(q, k, v, g, beta, lam, segment_ids_BT, st))
  (o,) = delta.sanitize(real_BT, o)
  return o


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _mixer(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, segment_ids_BT, st):
  """o_BTHV through the kernel; gradients (interim) from the XLA chunked form."""
  return _forward(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, segment_ids_BT, st)


def _mixer_fwd(q, k, v, g, beta, lam, seg, st):
  return _forward(q, k, v, g, beta, lam, seg, st), (q, k, v, g, beta, lam, seg)


def _mixer_bwd(st, res, do_BTHV):
  q, k, v, g, beta, lam, seg = res
  _, vjp = jax.vjp(lambda *a: _xla(*a, seg, st), q, k, v, g, beta, lam)
  return tuple(vjp(do_BTHV.astype(v.dtype))) + (None,)


_mixer.defvjp(_mixer_fwd, _mixer_bwd)


@functools.partial(jax.jit, static_argnames=('st',))
def _run(q, k, v, g, beta, lam, segment_ids_BT, st):
  return _mixer(q, k, v, g, beta, lam, segment_ids_BT, st)


def gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, *, initial_state_BHKV=None,
                segment_ids_BT=None, chunk_size=64, scale=1.0, return_final_state=False,
                interpret=False, config=KernelConfig()):
  """Gated DeltaNet (lloglin.ops.delta.gdn_chunked) through the Pallas forward kernel.

  initial_state_BHKV, return_final_state, chunk_size < 16 and packed rows run the XLA form; the
  backward pass is the XLA form's (module docstring).
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
  forward kernel.

  initial_state, return_final_state, chunk_size < 16, T > 2^(L-1) and packed rows run the XLA
  form; the backward pass is the XLA form's (module docstring).
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
