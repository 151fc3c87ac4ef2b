"""Mamba-2 SSD (lloglin.ops.ssd.ssd_chunked) with materialised chunk states and a parallel output
pass: a second Pallas (Triton lowering) implementation next to kernel.level_scan.

Why: level_scan runs one program per (batch row, head, block of V) that walks the chunks in order
and does the intra-chunk product and the state read / write in the same loop. The loop carries
registers for everything, and every V-block program re-reads all of q and k (8.25 Mtok/s fwd+bwd
on an H200 at 16 x 128 heads, T = 8192, against 16.1 for fla's chunk_simple_gla). This module
follows the split that fla's chunk_simple_gla uses: only the [K, V] state recurrence is
sequential, and it stores the state of every chunk; all the per-chunk matmuls then run in kernels
that are parallel over chunks. For a head, in chunks of C tokens, with G the in-chunk inclusive
cumsum of the log-decay g, gs = G_{C-1} the chunk's total decay and q already scaled:

  forward   (1) _states:  h_0 = 0,  h_{c+1} = exp(gs_c) h_c + (k_c * exp(gs_c - G))^T v_c
                          (one program per (row, head, V block), loop over chunks; h_c stored, fp32)
            (2) _output:  o_c = exp(G) * (q_c h_c) + (q_c k_c^T * causal decay) v_c,
                          causal decay_ts = exp(G_t - G_s) for s <= t, else 0
                          (one program per (row, head, chunk, V block))
  backward  (3) _states reversed: D_c = dL/dh_{c+1} (the state leaving chunk c), D_{N-1} = 0,
                          D_{c-1} = exp(gs_c) D_c + (q_c * exp(G))^T do_c   (stored, fp32)
            (4) _grads:   one program per (row, head, chunk), looping over the V blocks:
                          dq = dP k + exp(G) * (do h_c^T),  dP = (do v^T) * causal decay
                          dk = dP^T q + exp(gs - G) * (v D_c^T)
                          dv = (q k^T * causal decay)^T do + exp(gs - G) * (k D_c)
                          dg (below)
  h is recomputed in the backward instead of saved (one cheap sequential pass; h is
  B*H*(T/C)*K*V fp32, 1 GiB per layer at 16 x 128 heads, C = 64 and 65,536 tokens).

dg without a cumsum over T. With Lambda_t the global cumsum of g, dL/dLambda_t = q_t.dq_t -
k_t.dk_t and dg_r = sum_{t >= r} dL/dLambda_t. level_scan sums that over the whole sequence, so
the bf16 rounding of dq and dk random-walks along T (kernel._dot_state). Here the sum is cut at the
chunk's end: the tail sum_{t after chunk c} dL/dLambda_t is the derivative of L with respect to
adding delta to every Lambda_t after the chunk, which multiplies exactly the pairs that cross the
boundary, i.e. scales the state h_{c+1} by exp(delta). So it equals <h_{c+1}, D_c> =
exp(gs_c) <h_c, D_c> + sum_s k_s . dk_s^inter (dk^inter = exp(gs - G) v D_c^T, the cross-chunk part
of dk), and dg_r = (in-chunk reverse cumsum of q.dq - k.dk)_r + <h_{c+1}, D_c>: every rounding
error stays inside one chunk (its fp32 state products are the only long-range terms). So the state
matmuls need no hi + lo split (kernel._dot_state): in interpret mode, bf16 inputs against the fp32
XLA form at 2 heads x 64, the dg error is 2.4e-3 at both T = 4096 and T = 8192, with or without it.

Conventions as in pallas_kernels/loglinear/kernel.py: 2-D dots with fp32 accumulation, matmul
operands in the input dtype (bf16 on GPU), states, decays and dg in fp32; decay weights that
depend on one token scale rows after the matmul, exponents are masked before exp and are <= 0.
Grouped q/k heads (head h reads group h // (H // G)); feature axes are zero-padded to powers of
two >= 16 and T to whole chunks (the caller); batches whose arrays (h included) would reach 2^31
elements are split.

Scope: rows without segment ids, or one document per row from position 0 then padding (decided
at run time, as pallas_kernels.loglinear does), run these kernels. Packed documents,
initial_state_BHKV, return_final_state and chunk_size < 16 delegate to
pallas_kernels.loglinear.ssd_chunked (level_scan, or its XLA fallback).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

import pallas_kernels.loglinear as pk
from lloglin.ops import _checks
from lloglin.ops import delta
from pallas_kernels.loglinear.common import (KernelConfig, gate_layouts, in_row_batches,
                                             one_document_per_row, padded_inputs, pow2)
from pallas_kernels.loglinear.kernel import _dot

__all__ = ['ssd_chunked_states']


class _Static(NamedTuple):
  chunk_size: int
  scale: float
  interpret: bool
  config: KernelConfig


def _decays(g_ref, sl=slice(None)):
  """(G, gs): in-chunk inclusive cumsum of the log-decay and the chunk total, fp32."""
  g = g_ref[sl].astype(jnp.float32)
  return jnp.cumsum(g), jnp.sum(g)


def _causal_decay(G):
  """exp(G_t - G_s) for s <= t, else 0 (exponent masked before exp)."""
  C = G.shape[0]
  row = lax.broadcasted_iota(jnp.int32, (C, C), 0)
  col = lax.broadcasted_iota(jnp.int32, (C, C), 1)
  return jnp.exp(jnp.where(row >= col, G[:, None] - G[None, :], -jnp.inf))


# ------------------------------------------------------------------------------------------------
# kernels


def _states_kernel(x_ref, y_ref, g_ref, s_ref, *, C, N, reverse, mm_dtype):
  """Stores the state of every chunk. Forward (x = k, y = v): s[c] = h_c, the state entering
  chunk c. Reverse (x = q, y = do): s[c] = D_c, the gradient of the state leaving chunk c."""
  K, BV = x_ref.shape[-1], y_ref.shape[-1]

  def body(i, S):
    c = N - 1 - i if reverse else i
    sl = pl.ds(pl.multiple_of(c * C, C), C)
    s_ref[pl.ds(pl.multiple_of(c * K, K), K), :] = S
    G, gs = _decays(g_ref, sl)
    w = jnp.exp(G) if reverse else jnp.exp(gs - G)
    x = x_ref[sl, :].astype(jnp.float32) * w[:, None]
    return S * jnp.exp(gs) + _dot(x, y_ref[sl, :], mm_dtype, (0, 0))

  lax.fori_loop(0, N, body, jnp.zeros((K, BV), jnp.float32))


def _output_kernel(q_ref, k_ref, v_ref, g_ref, h_ref, o_ref, *, mm_dtype):
  """o_c (one V block) = exp(G) * (q_c h_c) + (q_c k_c^T * causal decay) v_c."""
  q, k = q_ref[...], k_ref[...]
  G, _ = _decays(g_ref)
  a = _dot(q, k, mm_dtype, (1, 1)) * _causal_decay(G)
  o = jnp.exp(G)[:, None] * _dot(q, h_ref[...], mm_dtype) + _dot(a, v_ref[...], mm_dtype)
  o_ref[...] = o.astype(o_ref.dtype)


def _grads_kernel(q_ref, k_ref, v_ref, g_ref, h_ref, dh_ref, do_ref, dq_ref, dk_ref, dv_ref,
                  dg_ref, *, block_v, mm_dtype):
  """dq, dk (per head), dv and dg of one chunk (module docstring), looping over the V blocks."""
  q, k = q_ref[...], k_ref[...]
  C, K = q.shape
  G, gs = _decays(g_ref)
  decay = _causal_decay(G)
  a = _dot(q, k, mm_dtype, (1, 1)) * decay
  wq, wk = jnp.exp(G)[:, None], jnp.exp(gs - G)[:, None]
  dq = jnp.zeros((C, K), jnp.float32)
  dk = jnp.zeros((C, K), jnp.float32)
  hd = jnp.zeros((), jnp.float32)                 # <h_c, D_c>
  kdv = jnp.zeros((), jnp.float32)                # sum_s k_s . dk_s^inter
  for j in range(v_ref.shape[-1] // block_v):
    vs = pl.ds(j * block_v, block_v)
    v, do, h, dh = v_ref[:, vs], do_ref[:, vs], h_ref[:, vs], dh_ref[:, vs]
    dp = _dot(do, v, mm_dtype, (1, 1)) * decay
    dq = dq + _dot(dp, k, mm_dtype) + wq * _dot(do, h, mm_dtype, (1, 1))
    dk = dk + _dot(dp, q, mm_dtype, (0, 0)) + wk * _dot(v, dh, mm_dtype, (1, 1))
    kd = wk * _dot(k, dh, mm_dtype)               # k_s^T D_c, row-weighted: also dv's state term
    dv_ref[:, vs] = (_dot(a, do, mm_dtype, (0, 0)) + kd).astype(dv_ref.dtype)
    hd = hd + jnp.sum(h * dh)
    kdv = kdv + jnp.sum(kd * v.astype(jnp.float32))
  x = (jnp.sum(q.astype(jnp.float32) * dq, axis=1)
       - jnp.sum(k.astype(jnp.float32) * dk, axis=1))
  tail = jnp.exp(gs) * hd + kdv                   # <h_{c+1}, D_c>: pairs crossing the end
  dg_ref[...] = jnp.sum(x) - jnp.cumsum(x) + x + tail
  dq_ref[...] = dq
  dk_ref[...] = dk


# ------------------------------------------------------------------------------------------------
# launches (batch split below 2^31 elements per array)


def _launch(kernel, args, grid, in_specs, out_specs, out_shape, name, st, per_row):
  """pl.pallas_call over slices of the batch (grid axis 0 and out_shape axis 0: the rows)."""
  def call(*sliced):
    rows = sliced[0].shape[0]
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct((rows,) + s.shape[1:], s.dtype),
                          out_shape)
    out = pl.pallas_call(
        kernel, grid=(rows,) + grid[1:], in_specs=in_specs, out_specs=out_specs,
        out_shape=shapes, interpret=st.interpret, name=name,
        compiler_params=pltriton.CompilerParams(num_warps=st.config.num_warps,
                                                num_stages=st.config.num_stages))(*sliced)
    return tuple(out) if isinstance(out, list) else out

  return in_row_batches(call, args, per_row, f'pallas ssd_states kernels (T={args[0].shape[1]})')


def _seq_spec(x, heads, width, blocked):
  """[B, P, X, F] read whole along P by a (row, head, j) program (X heads or groups)."""
  r = heads // x.shape[2]
  if blocked:
    return pl.BlockSpec((None, x.shape[1], None, width), lambda b, h, j: (b, 0, h // r, j))
  return pl.BlockSpec((None, x.shape[1], None, width), lambda b, h, j: (b, 0, h // r, 0))


def _states(x_BPXK, y_BPHV, g_BHP, *, reverse, st):
  """Chunk states [B, H, N*K, V] fp32: row block c holds the state of chunk c."""
  B, P, _, K = x_BPXK.shape
  H, V = y_BPHV.shape[2], y_BPHV.shape[3]
  C = st.chunk_size
  N = P // C
  BV = min(st.config.block_v, V)
  kernel = functools.partial(_states_kernel, C=C, N=N, reverse=reverse,
                             mm_dtype=jnp.result_type(x_BPXK.dtype, y_BPHV.dtype))
  return _launch(
      kernel, (x_BPXK, y_BPHV, g_BHP), (B, H, V // BV),
      [_seq_spec(x_BPXK, H, K, False), _seq_spec(y_BPHV, H, BV, True),
       pl.BlockSpec((None, None, P), lambda b, h, j: (b, h, 0))],
      pl.BlockSpec((None, None, N * K, BV), lambda b, h, j: (b, h, 0, j)),
      jax.ShapeDtypeStruct((B, H, N * K, V), jnp.float32),
      'ssd_states_' + ('bwd' if reverse else 'fwd'), st, _per_row(x_BPXK, y_BPHV, C))


def _per_row(x_BPXK, y_BPHV, C):
  """Elements per batch row of the largest array: a sequence array or the chunk states."""
  P, K = x_BPXK.shape[1], x_BPXK.shape[3]
  H, V = y_BPHV.shape[2], y_BPHV.shape[3]
  return max(P * H * max(K, V), H * (P // C) * K * V)


def _chunk_spec(x, heads, C, F=None):
  """[B, P, X, F]: the chunk of a (row, head, chunk[, j]) program; block j of size F along the
  features (None: all of them)."""
  r = heads // x.shape[2]
  if F is None:
    return pl.BlockSpec((None, C, None, x.shape[3]), lambda b, h, c, *j: (b, c, h // r, 0))
  return pl.BlockSpec((None, C, None, F), lambda b, h, c, j: (b, c, h // r, j))


def _forward(q, k, v, g_BHP, st):
  """o_BPHV from padded inputs (q already scaled)."""
  B, P, _, K = q.shape
  H, V = v.shape[2], v.shape[3]
  C = st.chunk_size
  BV = min(st.config.block_v, V)
  h = _states(k, v, g_BHP, reverse=False, st=st)
  kernel = functools.partial(_output_kernel, mm_dtype=jnp.result_type(q.dtype, k.dtype, v.dtype))
  return _launch(
      kernel, (q, k, v, g_BHP, h), (B, H, P // C, V // BV),
      [_chunk_spec(q, H, C), _chunk_spec(k, H, C), _chunk_spec(v, H, C, BV),
       pl.BlockSpec((None, None, C), lambda b, h, c, j: (b, h, c)),
       pl.BlockSpec((None, None, K, BV), lambda b, h, c, j: (b, h, c, j))],
      pl.BlockSpec((None, C, None, BV), lambda b, h, c, j: (b, c, h, j)),
      jax.ShapeDtypeStruct((B, P, H, V), v.dtype), 'ssd_states_output', st, _per_row(q, v, C))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _mixer(q_BPGK, k_BPGK, v_BPHV, g_BPH, st):
  """Padded inputs (P = whole chunks, power-of-two feature axes, padding zeroed) -> o_BPHV."""
  return _forward(q_BPGK * st.scale, k_BPGK, v_BPHV, gate_layouts(g_BPH)[0], st)


def _mixer_fwd(q, k, v, g, st):
  return _forward(q * st.scale, k, v, gate_layouts(g)[0], st), (q, k, v, g)


def _mixer_bwd(st, res, do_BPHV):
  q, k, v, g = res
  B, P, G, K = q.shape
  H, V = v.shape[2], v.shape[3]
  C = st.chunk_size
  g_BHP = gate_layouts(g)[0]
  qs = q * st.scale
  do = do_BPHV.astype(v.dtype)
  h = _states(k, v, g_BHP, reverse=False, st=st)
  dh = _states(qs, do, g_BHP, reverse=True, st=st)
  mm_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
  kernel = functools.partial(_grads_kernel, block_v=min(st.config.block_v, V), mm_dtype=mm_dtype)
  per_chunk = lambda F: pl.BlockSpec((None, C, None, F), lambda b, h, c: (b, c, h, 0))  # noqa: E731
  state = pl.BlockSpec((None, None, K, V), lambda b, h, c: (b, h, c, 0))
  gate = pl.BlockSpec((None, None, C), lambda b, h, c: (b, h, c))
  dqs_BPHK, dk_BPHK, dv, dg_BHP = _launch(
      kernel, (qs, k, v, g_BHP, h, dh, do), (B, H, P // C),
      [_chunk_spec(qs, H, C), _chunk_spec(k, H, C), per_chunk(V), gate, state,
       state, per_chunk(V)],
      [per_chunk(K), per_chunk(K), per_chunk(V), gate],
      [jax.ShapeDtypeStruct((B, P, H, K), jnp.float32),
       jax.ShapeDtypeStruct((B, P, H, K), jnp.float32),
       jax.ShapeDtypeStruct((B, P, H, V), v.dtype),
       jax.ShapeDtypeStruct((B, H, P), jnp.float32)],
      'ssd_states_grads', st, _per_row(q, v, C))
  group = lambda x: jnp.sum(x.reshape(B, P, G, H // G, K), axis=3)  # noqa: E731
  dq = (group(dqs_BPHK) * st.scale).astype(q.dtype)
  dk = group(dk_BPHK).astype(k.dtype)
  dg = jnp.moveaxis(dg_BHP, 1, 2).astype(g.dtype)
  return dq, dk, dv, dg


_mixer.defvjp(_mixer_fwd, _mixer_bwd)


@functools.partial(jax.jit, static_argnames=('chunk_size', 'scale', 'interpret', 'config'))
def _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, segment_ids_BT, *, chunk_size, scale, interpret, config):
  T, K = q_BTGK.shape[1], q_BTGK.shape[3]
  V = v_BTHV.shape[-1]
  (q, k, v, g), real_BP = padded_inputs([q_BTGK, k_BTGK, v_BTHV, g_BTH], segment_ids_BT,
                                        chunk_size, [pow2(K), pow2(K), pow2(V), None])
  st = _Static(chunk_size, scale, interpret, config)
  if segment_ids_BT is None:
    return _mixer(q, k, v, g, st)[:, :T, :, :V]

  def aligned():
    (o_BPHV,) = delta.sanitize(real_BP, _mixer(q, k, v, g, st))
    return o_BPHV[:, :T, :, :V]

  def packed():
    return pk.ssd_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, segment_ids_BT=segment_ids_BT,
                          chunk_size=chunk_size, scale=scale, interpret=interpret, config=config)

  return lax.cond(one_document_per_row(segment_ids_BT), aligned, packed)


def ssd_chunked_states(q_BTGK, k_BTGK, v_BTHV, g_BTH, *, initial_state_BHKV=None,
                       segment_ids_BT=None, chunk_size=64, scale=1.0, return_final_state=False,
                       interpret=False, config=KernelConfig()):
  """Mamba-2 SSD (lloglin.ops.ssd.ssd_chunked) through the materialised-states kernels (module
  docstring). Packed documents, initial_state_BHKV, return_final_state and chunk_size < 16
  delegate to pallas_kernels.loglinear.ssd_chunked. Returns o_BTHV [and the final state]."""
  _checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                           segment_ids_BT=segment_ids_BT, initial_state_BHKV=initial_state_BHKV,
                           chunk_size=chunk_size)
  if initial_state_BHKV is not None or return_final_state or chunk_size < 16:
    return pk.ssd_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, initial_state_BHKV=initial_state_BHKV,
                          segment_ids_BT=segment_ids_BT, chunk_size=chunk_size, scale=scale,
                          return_final_state=return_final_state, interpret=interpret,
                          config=config)
  return _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, segment_ids_BT, chunk_size=chunk_size,
              scale=float(scale), interpret=interpret, config=config)
