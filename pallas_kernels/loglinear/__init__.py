"""Pallas kernels for chunked log-linear Mamba-2 and plain Mamba-2 SSD (hierarchy off).

Same signatures and semantics as lloglin.ops.loglinear.loglinear_ssd_chunked and
lloglin.ops.ssd.ssd_chunked, plus `interpret` (run the kernels through the Pallas interpreter,
for CPU tests). One kernel (kernel.level_scan, Pallas Triton lowering) serves every pass:

  forward   o   = causal(q, k, v)                     (scale folded into q)
  backward  dq  = causal(dO, v, k), dlam from its per-level terms dotted with q
            dk  = anti(v, dO, q),  dv = anti(k, q, dO)
            dg  = reverse cumsum over t of (q . dq - k . dk)   (per head; g enters as a cumsum)

wired through jax.custom_vjp; q/k gradients of grouped heads are summed over their group.

Served by the kernels: no initial state, no final state, chunk_size >= 16, and segment_ids_BT
either None or one document per row followed only by padding (ids 1...1 0...0, checked at run
time: lax.cond picks the kernels, on inputs with the padding zeroed, or the XLA form). Anything
else (packed documents, states, small chunks, with segment ids a T beyond the capacity of the L
levels) falls back, explicitly, to the lloglin.ops XLA chunked form (same results, XLA speed), so
no argument is ever silently ignored. Feature axes are zero-padded to powers of two
(>= 16) and T to whole chunks; batches whose arrays would reach 2^31 elements are split so that
no kernel offset overflows int32.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lloglin.ops import _checks
from lloglin.ops import hierarchy
from lloglin.ops import loglinear as ops_loglinear
from lloglin.ops import ssd as ops_ssd
from pallas_kernels.loglinear.kernel import level_scan

__all__ = ['loglinear_ssd_chunked', 'ssd_chunked', 'KernelConfig']

MAX_ELEMENTS = 2**31 - 1
HIGHEST = lax.Precision.HIGHEST


class KernelConfig(NamedTuple):
  """Launch parameters of the Triton kernels (block_v: feature block of the output axis).

  Default: the fastest of those tried on an H200 at 16 heads x 128, T = 8192 (bf16).
  """
  block_v: int = 32
  num_warps: int = 8
  num_stages: int = 2


class _Static(NamedTuple):
  chunk_size: int
  scale: float
  levels: int | None          # None: hierarchy off (plain SSD)
  interpret: bool
  config: KernelConfig


def _pow2(n):
  return max(16, 1 << (n - 1).bit_length())


def _scan(a, b, c, g_BHP, lam_BHLP, qx=None, *, st, heads, reverse, out_dtype):
  """level_scan, split along the batch so that no array reaches 2^31 elements."""
  P = a.shape[1]
  per_row = P * max([x.shape[2] * x.shape[3] for x in (a, b, c) + ((qx,) if qx is not None else ())]
                    + [heads * c.shape[3]]
                    + ([heads * lam_BHLP.shape[2] * (c.shape[3] // min(st.config.block_v,
                                                                        c.shape[3]))]
                       if lam_BHLP is not None else []))
  if per_row > MAX_ELEMENTS:
    raise ValueError(f'pallas loglinear kernels: one batch row holds {per_row} elements '
                     f'(T={P}, heads={heads}); expected fewer than 2^31 (split the sequence)')
  rows = max(1, MAX_ELEMENTS // per_row)
  fn = functools.partial(level_scan, heads=heads, chunk_size=st.chunk_size, reverse=reverse,
                         levels=st.levels, out_dtype=out_dtype, block_v=st.config.block_v,
                         num_warps=st.config.num_warps, num_stages=st.config.num_stages,
                         interpret=st.interpret)
  B = a.shape[0]
  if B <= rows:
    return fn(a, b, c, g_BHP, lam_BHLP, qx)
  pieces = []
  for s in range(0, B, rows):
    sl = slice(s, min(B, s + rows))
    pieces.append(fn(a[sl], b[sl], c[sl], g_BHP[sl], None if lam_BHLP is None else lam_BHLP[sl],
                     None if qx is None else qx[sl]))
  if qx is None:
    return jnp.concatenate(pieces, axis=0)
  return (jnp.concatenate([p[0] for p in pieces], axis=0),
          jnp.concatenate([p[1] for p in pieces], axis=1))


def _layouts(g_BPH, lam_BPHL):
  g_BHP = jnp.moveaxis(g_BPH.astype(jnp.float32), 1, 2)
  lam_BHLP = None if lam_BPHL is None else jnp.transpose(lam_BPHL.astype(jnp.float32), (0, 2, 3, 1))
  return g_BHP, lam_BHLP


def _forward(q, k, v, g, lam, st):
  H = v.shape[2]
  g_BHP, lam_BHLP = _layouts(g, lam)
  return _scan(q * st.scale, k, v, g_BHP, lam_BHLP, st=st, heads=H, reverse=False,
               out_dtype=v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _mixer(q_BPGK, k_BPGK, v_BPHV, g_BPH, lam_BPHL, st):
  """Padded inputs (P = whole chunks, power-of-two feature axes) -> o_BPHV."""
  return _forward(q_BPGK, k_BPGK, v_BPHV, g_BPH, lam_BPHL, st)


def _mixer_fwd(q, k, v, g, lam, st):
  return _forward(q, k, v, g, lam, st), (q, k, v, g, lam)


def _mixer_bwd(st, res, do_BPHV):
  q, k, v, g, lam = res
  B, P, G, K = q.shape
  H = v.shape[2]
  R = H // G
  g_BHP, lam_BHLP = _layouts(g, lam)
  qs = q * st.scale
  do = do_BPHV.astype(v.dtype)
  scan = functools.partial(_scan, g_BHP=g_BHP, lam_BHLP=lam_BHLP, st=st, heads=H,
                           out_dtype=jnp.float32)
  if lam is None:
    dqs_BPHK, dlam = scan(do, v, k, reverse=False), None
  else:
    dqs_BPHK, dlam_JBHLP = scan(do, v, k, qx=qs, reverse=False)
    dlam_BPHL = jnp.transpose(jnp.sum(dlam_JBHLP, axis=0), (0, 3, 1, 2))
    dlam = jnp.pad(dlam_BPHL, ((0, 0), (0, 0), (0, 0), (0, lam.shape[3] - dlam_BPHL.shape[3])))
    dlam = dlam.astype(lam.dtype)
  dk_BPHK = scan(v, do, qs, reverse=True)
  dv = scan(k, qs, do, reverse=True).astype(v.dtype)
  rep = lambda x: jnp.repeat(x, R, axis=2).astype(jnp.float32)
  dG_BPH = (jnp.einsum('bphk,bphk->bph', rep(qs), dqs_BPHK, precision=HIGHEST)
            - jnp.einsum('bphk,bphk->bph', rep(k), dk_BPHK, precision=HIGHEST))
  dg = lax.cumsum(dG_BPH, axis=1, reverse=True).astype(g.dtype)
  group = lambda x: jnp.sum(x.reshape(B, P, G, R, K), axis=3)
  dq = (group(dqs_BPHK) * st.scale).astype(q.dtype)
  dk = group(dk_BPHK).astype(k.dtype)
  return dq, dk, dv, dg, dlam


_mixer.defvjp(_mixer_fwd, _mixer_bwd)


@functools.partial(jax.jit, static_argnames=('chunk_size', 'scale', 'with_levels', 'interpret',
                                             'config'))
def _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, *, chunk_size, scale, with_levels, interpret,
         config):
  B, T, G, K = q_BTGK.shape
  V = v_BTHV.shape[-1]
  P = -(-T // chunk_size) * chunk_size
  Kp, Vp = _pow2(K), _pow2(V)
  pad = lambda x, d: jnp.pad(x, ((0, 0), (0, P - T), (0, 0), (0, d - x.shape[-1])))
  lam = None
  if with_levels:
    lam = jnp.pad(lam_BTHL, ((0, 0), (0, P - T), (0, 0), (0, 0)))
  st = _Static(chunk_size, float(scale), lam_BTHL.shape[-1] if with_levels else None, interpret,
               config)
  o_BPHV = _mixer(pad(q_BTGK, Kp), pad(k_BTGK, Kp), pad(v_BTHV, Vp),
                  jnp.pad(g_BTH, ((0, 0), (0, P - T), (0, 0))), lam, st)
  return o_BPHV[:, :T, :, :V]


def _with_segments(kernel, xla, segment_ids_BT, arrays):
  """kernel(*arrays) when every row is one document then padding, else xla(*arrays)."""
  seg = jnp.asarray(segment_ids_BT)
  real_BT = seg != 0
  single = jnp.all(seg == real_BT.astype(seg.dtype)) & jnp.all(real_BT[:, 1:] <= real_BT[:, :-1])

  def fast(arrays):
    mask = lambda x: jnp.where(real_BT.reshape(real_BT.shape + (1,) * (x.ndim - 2)), x, 0)
    return mask(kernel(*[mask(x) for x in arrays]))

  return lax.cond(single, fast, lambda arrays: xla(*arrays), arrays)


def loglinear_ssd_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, *, initial_state=None,
                          segment_ids_BT=None, chunk_size=64, scale=1.0,
                          return_final_state=False, interpret=False, config=KernelConfig()):
  """Log-linear Mamba-2 (lloglin.ops.loglinear.loglinear_ssd_chunked) through the Pallas kernels.

  initial_state, return_final_state, chunk_size < 16 and packed segment ids run the XLA form
  (module docstring).
  """
  _checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                           lam_BTHL=lam_BTHL, segment_ids_BT=segment_ids_BT,
                           initial_state=initial_state, chunk_size=chunk_size)
  xla = functools.partial(ops_loglinear.loglinear_ssd_chunked, initial_state=initial_state,
                          chunk_size=chunk_size, scale=scale,
                          return_final_state=return_final_state)
  T, L = v_BTHV.shape[1], lam_BTHL.shape[-1]
  if (initial_state is not None or return_final_state or chunk_size < 16
      or T > hierarchy.capacity(L)):
    return xla(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, segment_ids_BT=segment_ids_BT)
  kernel = functools.partial(_run, chunk_size=chunk_size, scale=float(scale), with_levels=True,
                             interpret=interpret, config=config)
  arrays = (q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL)
  if segment_ids_BT is None:
    return kernel(*arrays)
  return _with_segments(kernel, functools.partial(xla, segment_ids_BT=segment_ids_BT),
                        segment_ids_BT, arrays)


def ssd_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, *, initial_state_BHKV=None, segment_ids_BT=None,
                chunk_size=64, scale=1.0, return_final_state=False, interpret=False,
                config=KernelConfig()):
  """Mamba-2 SSD (lloglin.ops.ssd.ssd_chunked): the same kernels with the hierarchy off.

  initial_state_BHKV, return_final_state, chunk_size < 16 and packed segment ids run the XLA
  form (module docstring).
  """
  _checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                           segment_ids_BT=segment_ids_BT, initial_state_BHKV=initial_state_BHKV,
                           chunk_size=chunk_size)
  xla = functools.partial(ops_ssd.ssd_chunked, initial_state_BHKV=initial_state_BHKV,
                          chunk_size=chunk_size, scale=scale,
                          return_final_state=return_final_state)
  if initial_state_BHKV is not None or return_final_state or chunk_size < 16:
    return xla(q_BTGK, k_BTGK, v_BTHV, g_BTH, segment_ids_BT=segment_ids_BT)
  kernel = functools.partial(_run, lam_BTHL=None, chunk_size=chunk_size, scale=float(scale),
                             with_levels=False, interpret=interpret, config=config)
  arrays = (q_BTGK, k_BTGK, v_BTHV, g_BTH)
  if segment_ids_BT is None:
    return kernel(*arrays)
  return _with_segments(kernel, functools.partial(xla, segment_ids_BT=segment_ids_BT),
                        segment_ids_BT, arrays)
