"""PaTH attention as Pallas kernels (Triton lowering), forward and backward.

Same math, arguments and outputs as `lloglin.ops.path.path_blockwise` (see that module for the
definition of PaTH and PaTH-FoX).

Backend: `pl.pallas_call` lowered through Pallas' Triton backend
(`compiler_params=pltriton.CompilerParams`), deprecated in jax 0.11 but shipped; it lowers for
Hopper and runs in interpret mode on CPU. Mosaic GPU (wgmma/TMA) is not used yet.

Algorithm. Chunks of C tokens; chunk c has the compact-WY product `P_c = I - W_c^T u_c`
(`u = T diag(beta) W`, `T` the UT factor, kernels.md 6.2), acting on query rows from the right
and on key columns from the left. The logit of query chunk i and key chunk j < i is
`qhat_i P_{i-1} ... P_{j+1} knew_j^T` (query moved to its chunk start, key to its chunk end).
Instead of carrying each query across every key chunk (whose backward would need the carried
queries in reverse order, O(T^2) memory), every pair meets at one boundary: the middle of the
smallest aligned dyadic block of chunks holding both, level `l = bit_length(i ^ j)`. Each token
gets one query copy and one key copy per level, moved to that level's boundary with dense K x K
products of aligned chunk blocks (a segment tree over chunks, built with XLA matmuls):

  Q^l_i = qhat_i P_{i-1} ... P_{mid}       (bit l-1 of i set, mid = i with bits < l-1 cleared)
  K^l_j = knew_j (P_{end-1} ... P_{j+1})^T (bit l-1 of j clear, end = the end of j's block)
  z_ij  = Q^l_i . K^l_j                    (exact; l = bit_length(i ^ j))

so the kernels are block-sparse FlashAttention over precomputed copies, with the in-chunk tile
`tril(Q K^T - tril(Q W^T) x)` (x = T diag(beta) SL(W K^T)) precomputed per chunk. Memory is
O(T (K log(T/C) + C)) per head plus O(T K^2 / C) per key head; no T x T matrix exists.

  _preprocess   XLA, differentiable by autodiff: UT pieces, copies Q^l, K^l, in-chunk logits z.
  _attend       custom_vjp. Forward kernel: per (head, batch, query chunk), diagonal tile, then
                every level's key chunks, online softmax in exp2 with fp32 statistics; saves the
                log-sum-exp. Backward kernels (FlashAttention-2 split): dq (per query chunk:
                dQ^l, dz, gate row sums) and dkv (per key chunk: dK^l, dv, gate column sums).
Gate and segment masks act on exponents. Matmul operands in the input dtype (bf16 on GPU),
accumulation in float32; the copies are built at HIGHEST precision for float32 inputs and at
default (TF32) precision for 16-bit inputs.

Status (H200, 16 heads x 128, 65,536 tokens, benchmarks/bench_mixers.py): below fla's
parallel_path_attn (forward+backward 1.20 / 0.789 / 0.389 Mtok/s at T = 2K / 8K / 32K, 0.69x /
0.75x / 0.97x its anchors). XLA's cost model puts most of the bytes in `_preprocess` and its
autodiff (copies per level), so the next step is building the copies (and their backward) in a
Pallas kernel. Compiled fwd+bwd memory at batch 1: 2.58 / 12.0 / 55.5 GiB at T = 8K / 32K / 131K
(T log T). One level's copies at a time in XLA made it linear but cost 2.1-2.5x the time (reverted).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from lloglin.ops.path import _keys_to_end, _prepare, _ut_transform

_LOG2E = 1.4426950408889634
_MASKED = -1e30  # finite: a fully masked tile gives exp2(-huge) = 0, never inf - inf


class KernelConfig(NamedTuple):
  """Triton launch parameters of the three PaTH kernels (the tile is `block_size`). The default
  was the fastest of six (block_size, warps, stages) tried on the H200 at T = 8192 (`bench_mixers.py
  --kernel_configs`, benchmarks/RESULTS.md)."""
  num_warps: int = 4
  num_stages: int = 2


def _dot(a, b, *, trans_a=False, trans_b=False):
  """2-D matmul with float32 accumulation; `trans_*` contracts over the other axis."""
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _num_levels(M):
  return max(1, (M - 1).bit_length())


# ---------------------------------------------------------------- preprocessing (XLA) ----------

def _preprocess(q_BTHK, k_BTGK, w_BTGK, beta_BTG, C, M, acc):
  """Query/key copies per level and in-chunk logits; T already padded to M * C.

  Returns qlv_BHLTK, klv_BGLTK (dtype of q/k), z_BHTC (float32) and, for the decode cache,
  (knew_BGMCK, w_BGMCK, u_BGMCK) in acc.
  """
  B, T, H, K = q_BTHK.shape
  G = k_BTGK.shape[2]
  R, L = H // G, _num_levels(M)
  prec = "highest" if jnp.dtype(q_BTHK.dtype).itemsize >= 4 else None
  ein = functools.partial(jnp.einsum, precision=prec)
  hi = functools.partial(jnp.einsum, precision="highest")
  chunk = lambda x: x.astype(acc).reshape((B, M, C) + x.shape[2:])
  q_BGRMCK = chunk(q_BTHK).reshape(B, M, C, G, R, K).transpose(0, 3, 4, 1, 2, 5)
  k_BGMCK, w_BGMCK = (chunk(x).transpose(0, 3, 1, 2, 4) for x in (k_BTGK, w_BTGK))
  beta_BGMC = chunk(beta_BTG).transpose(0, 3, 1, 2)

  # UT pieces per chunk (as lloglin.ops.path._intra_chunk).
  ut_BGMCC = _ut_transform(w_BGMCK, beta_BGMC)
  bw_BGMCK = beta_BGMC[..., None] * w_BGMCK
  u_BGMCK = hi("bgmij,bgmjk->bgmik", ut_BGMCC, bw_BGMCK)
  x_BGMCC = hi("bgmij,bgmjs->bgmis", ut_BGMCC,
               jnp.tril(hi("bgmjk,bgmsk->bgmjs", bw_BGMCK, k_BGMCK), -1))
  kn_BGMCK = k_BGMCK - hi("bgmis,bgmik->bgmsk", x_BGMCC, w_BGMCK)
  qw_BGRMCC = jnp.tril(hi("bgrmtk,bgmik->bgrmti", q_BGRMCK, w_BGMCK))
  z_BGRMCC = jnp.tril(hi("bgrmtk,bgmsk->bgrmts", q_BGRMCK, k_BGMCK)
                      - hi("bgrmti,bgmis->bgrmts", qw_BGRMCC, x_BGMCC))
  qhat_BGRMCK = q_BGRMCK - hi("bgrmti,bgmik->bgrmtk", qw_BGRMCC, u_BGMCK)

  # Segment tree of aligned block products, blk[s][a] = P_{(a+1)2^s - 1} ... P_{a 2^s}.
  eye_KK = jnp.eye(K, dtype=acc)
  p_BGMKK = eye_KK - hi("bgmck,bgmcl->bgmkl", w_BGMCK, u_BGMCK)
  p_BGMKK = jnp.concatenate(
      [p_BGMKK, jnp.broadcast_to(eye_KK, (B, G, 2**L - M, K, K))], axis=2)
  blk = [p_BGMKK]
  for _ in range(L - 2):
    blk.append(ein("bgakl,bgalm->bgakm", blk[-1][:, :, 1::2], blk[-1][:, :, 0::2]))

  qlv, klv = [], []
  q_cur, k_cur = qhat_BGRMCK, kn_BGMCK
  for s in range(L):  # level l = s + 1: boundaries at multiples of 2^s chunks
    qlv.append(q_cur)
    klv.append(k_cur)
    if s == L - 1:
      break
    # Queries with bit s set cross the block just below their boundary (even blocks); keys
    # with it clear cross the block just above theirs (odd blocks).
    q_cur = _cross_blocks(q_cur, blk[s][:, :, 0::2], s, True,
                          functools.partial(ein, "bgrahck,bgakl->bgrahcl"))
    k_cur = _cross_blocks(k_cur, blk[s][:, :, 1::2], s, False,
                          functools.partial(ein, "bgahck,bgalk->bgahcl"))

  qlv_BHLTK = jnp.stack(qlv, 3).reshape(B, H, L, T, K).astype(q_BTHK.dtype)
  klv_BGLTK = jnp.stack(klv, 2).reshape(B, G, L, T, K).astype(k_BTGK.dtype)
  z_BHTC = z_BGRMCC.reshape(B, H, T, C).astype(jnp.float32)
  return qlv_BHLTK, klv_BGLTK, z_BHTC, (kn_BGMCK, w_BGMCK, u_BGMCK)


def _cross_blocks(x_XMCK, blk_BGAKK, s, upper, apply):
  """Moves the rows of half of the chunks across one aligned block of 2^s chunks.

  Chunks are grouped in pairs of 2^s-chunk halves (axis -3 padded to whole pairs); pair a's
  upper (`upper=True`) or lower half is transformed by `apply(half_...AhCK, blk_BGAKK[:, :, a])`,
  the other half passes through. No per-chunk gather of the K x K blocks.
  """
  M, h = x_XMCK.shape[-3], 2**s
  A = -(-M // (2 * h))
  pad = [(0, 0)] * x_XMCK.ndim
  pad[-3] = (0, 2 * h * A - M)
  x = jnp.pad(x_XMCK, pad)
  x = x.reshape(x.shape[:-3] + (A, 2, h) + x.shape[-2:])
  lower, upper_half = x[..., 0, :, :, :], x[..., 1, :, :, :]
  if upper:
    upper_half = apply(upper_half, blk_BGAKK[:, :, :A])
  else:
    lower = apply(lower, blk_BGAKK[:, :, :A])
  x = jnp.stack([lower, upper_half], axis=-4)
  return x.reshape(x.shape[:-5] + (2 * h * A,) + x.shape[-2:])[..., :M, :, :]


# ---------------------------------------------------------------- kernels ----------------------

def _tile(s_CC, gq_C, gk_C, sq_C, sk_C, qk_scale, mask_CC=None):
  """Logits of one tile in log2 units: `qk_scale (z + G_t - G_s)`, masked on the exponent."""
  s_CC = s_CC * qk_scale
  if gq_C is not None:
    s_CC = s_CC + (gq_C[:, None] - gk_C[None, :]) * qk_scale
  if sq_C is not None:
    same_CC = sq_C[:, None] == sk_C[None, :]
    mask_CC = same_CC if mask_CC is None else mask_CC & same_CC
  return s_CC if mask_CC is None else jnp.where(mask_CC, s_CC, _MASKED)


def _opt(ref, idx):
  return None if ref is None else ref[idx]


def _fwd_kernel(qlv_ref, klv_ref, z_ref, v_ref, g_ref, seg_ref, o_ref, lse_ref, *, scale, C, M, L):
  """One query chunk of one head: diagonal tile, then the key chunks of every level."""
  i = M - 1 - pl.program_id(2)
  qk_scale = scale * _LOG2E
  rows = pl.ds(i * C, C)
  gq_C, sq_C = _opt(g_ref, rows), _opt(seg_ref, rows)
  causal_CC = jnp.arange(C)[:, None] >= jnp.arange(C)[None, :]
  s_CC = _tile(z_ref[...], gq_C, gq_C, sq_C, sq_C, qk_scale, causal_CC)
  m_C = jnp.max(s_CC, axis=1)
  p_CC = jnp.exp2(s_CC - m_C[:, None])
  l_C = jnp.sum(p_CC, axis=1)
  o_CV = _dot(p_CC.astype(v_ref.dtype), v_ref[rows, :])

  def level(lv, carry):
    bit = (i >> lv) & 1
    mid = (i >> lv) << lv
    q_CK = qlv_ref[lv, rows, :]

    def step(t, carry):
      m_C, l_C, o_CV = carry
      cols = pl.ds((mid - 1 - t) * C, C)
      s_CC = _tile(_dot(q_CK, klv_ref[lv, cols, :], trans_b=True), gq_C, _opt(g_ref, cols),
                   sq_C, _opt(seg_ref, cols), qk_scale)
      m_new_C = jnp.maximum(m_C, jnp.max(s_CC, axis=1))
      alpha_C = jnp.exp2(m_C - m_new_C)
      p_CC = jnp.exp2(s_CC - m_new_C[:, None])
      l_C = alpha_C * l_C + jnp.sum(p_CC, axis=1)
      o_CV = alpha_C[:, None] * o_CV + _dot(p_CC.astype(v_ref.dtype), v_ref[cols, :])
      return m_new_C, l_C, o_CV

    return jax.lax.fori_loop(0, bit << lv, step, carry)

  m_C, l_C, o_CV = jax.lax.fori_loop(0, L, level, (m_C, l_C, o_CV))
  o_ref[...] = (o_CV / l_C[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m_C + jnp.log2(l_C)


def _dq_kernel(qlv_ref, klv_ref, z_ref, v_ref, g_ref, seg_ref, do_ref, lse_ref, delta_ref,
               dqlv_ref, dz_ref, dgq_ref, *, scale, C, M, L):
  """dQ^l (all levels), dz and the gate row sums of one query chunk of one head."""
  i = M - 1 - pl.program_id(2)
  qk_scale = scale * _LOG2E
  rows = pl.ds(i * C, C)
  gq_C, sq_C = _opt(g_ref, rows), _opt(seg_ref, rows)
  do_CV, lse_C, delta_C = do_ref[...], lse_ref[...], delta_ref[...]

  def grad_logits(s_CC, v_CV):
    """dS = P (dO v^T - delta), the gradient w.r.t. the natural-unit logits."""
    p_CC = jnp.exp2(s_CC - lse_C[:, None])
    return p_CC * (_dot(do_CV, v_CV, trans_b=True) - delta_C[:, None])

  causal_CC = jnp.arange(C)[:, None] >= jnp.arange(C)[None, :]
  ds_CC = grad_logits(_tile(z_ref[...], gq_C, gq_C, sq_C, sq_C, qk_scale, causal_CC),
                      v_ref[rows, :])
  dz_ref[...] = scale * ds_CC
  dg_C = jnp.sum(ds_CC, axis=1)

  def level(lv, dg_C):
    bit = (i >> lv) & 1
    mid = (i >> lv) << lv
    q_CK = qlv_ref[lv, rows, :]

    def step(t, carry):
      dq_CK, dg_C = carry
      cols = pl.ds((mid - 1 - t) * C, C)
      k_CK = klv_ref[lv, cols, :]
      s_CC = _tile(_dot(q_CK, k_CK, trans_b=True), gq_C, _opt(g_ref, cols), sq_C,
                   _opt(seg_ref, cols), qk_scale)
      ds_CC = grad_logits(s_CC, v_ref[cols, :])
      return dq_CK + _dot(ds_CC.astype(k_CK.dtype), k_CK), dg_C + jnp.sum(ds_CC, axis=1)

    dq_CK, dg_C = jax.lax.fori_loop(0, bit << lv, step,
                                    (jnp.zeros(q_CK.shape, jnp.float32), dg_C))
    dqlv_ref[lv, :, :] = (scale * dq_CK).astype(dqlv_ref.dtype)
    return dg_C

  dgq_ref[...] = scale * jax.lax.fori_loop(0, L, level, dg_C)


def _dkv_kernel(qlv_ref, klv_ref, z_ref, v_ref, g_ref, seg_ref, do_ref, lse_ref, delta_ref,
                dklv_ref, dv_ref, dgk_ref, *, scale, C, M, L):
  """dK^l (all levels), dv and the gate column sums of one key chunk, for one query head."""
  j = pl.program_id(2)
  qk_scale = scale * _LOG2E
  cols = pl.ds(j * C, C)
  gk_C, sk_C = _opt(g_ref, cols), _opt(seg_ref, cols)
  v_CV = v_ref[...]

  def grads(s_CC, rows):
    """(P, dS) of a tile whose queries are `rows`."""
    p_CC = jnp.exp2(s_CC - lse_ref[rows][:, None])
    do_CV = do_ref[rows, :]
    ds_CC = p_CC * (_dot(do_CV, v_CV, trans_b=True) - delta_ref[rows][:, None])
    return p_CC, ds_CC, do_CV

  causal_CC = jnp.arange(C)[:, None] >= jnp.arange(C)[None, :]
  p_CC, ds_CC, do_CV = grads(
      _tile(z_ref[...], gk_C, gk_C, sk_C, sk_C, qk_scale, causal_CC), cols)
  dv_CV = _dot(p_CC.astype(do_CV.dtype), do_CV, trans_a=True)
  dg_C = jnp.sum(ds_CC, axis=0)

  def level(lv, carry):
    clear = 1 - ((j >> lv) & 1)
    start = ((j >> lv) + 1) << lv  # first query chunk above j's boundary at this level
    k_CK = klv_ref[lv, cols, :]

    def step(t, carry):
      dk_CK, dv_CV, dg_C = carry
      rows = pl.ds((start + t) * C, C)
      q_CK = qlv_ref[lv, rows, :]
      s_CC = _tile(_dot(q_CK, k_CK, trans_b=True), _opt(g_ref, rows), gk_C, _opt(seg_ref, rows),
                   sk_C, qk_scale)
      p_CC, ds_CC, do_CV = grads(s_CC, rows)
      dv_CV = dv_CV + _dot(p_CC.astype(do_CV.dtype), do_CV, trans_a=True)
      dk_CK = dk_CK + _dot(ds_CC.astype(q_CK.dtype), q_CK, trans_a=True)
      return dk_CK, dv_CV, dg_C + jnp.sum(ds_CC, axis=0)

    trips = clear * jnp.clip(M - start, 0, 1 << lv)
    dk_CK, dv_CV, dg_C = jax.lax.fori_loop(
        0, trips, step, (jnp.zeros(k_CK.shape, jnp.float32),) + carry)
    dklv_ref[lv, :, :] = scale * dk_CK
    return dv_CV, dg_C

  dv_CV, dg_C = jax.lax.fori_loop(0, L, level, (dv_CV, dg_C))
  dv_ref[...] = dv_CV
  dgk_ref[...] = -scale * dg_C


def _specs(B, H, G, L, Tp, C, K, V, M, *, gate, seg, key_major):
  """BlockSpecs of the shared kernel inputs (qlv, klv, z, v, gate, seg) on grid (H, B, M)."""
  R = H // G
  chunk = (lambda n: n) if key_major else (lambda n: M - 1 - n)
  specs = [
      pl.BlockSpec((None, None, L, Tp, K), lambda h, b, n: (b, h, 0, 0, 0)),
      pl.BlockSpec((None, None, L, Tp, K), lambda h, b, n: (b, h // R, 0, 0, 0)),
      pl.BlockSpec((None, None, C, C), lambda h, b, n: (b, h, chunk(n), 0)),
      pl.BlockSpec((None, C, None, V), lambda h, b, n: (b, chunk(n), h // R, 0)) if key_major
      else pl.BlockSpec((None, Tp, None, V), lambda h, b, n: (b, 0, h // R, 0)),
      pl.BlockSpec((None, None, Tp), lambda h, b, n: (b, h, 0)) if gate else None,
      pl.BlockSpec((None, Tp), lambda h, b, n: (b, 0)) if seg else None,
  ]
  return specs, chunk


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _attend(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, scale, C, config, interpret):
  return _attend_fwd(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, scale, C, config,
                     interpret)[0]


def _attend_fwd(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, scale, C, config,
                interpret):
  B, H, L, Tp, K = qlv_BHLTK.shape
  G, V, M = klv_BGLTK.shape[1], v_BTGV.shape[-1], Tp // C
  specs, chunk = _specs(B, H, G, L, Tp, C, K, V, M, gate=gate_BHT is not None,
                        seg=seg_BT is not None, key_major=False)
  o_BTHV, lse_BHT = pl.pallas_call(
      functools.partial(_fwd_kernel, scale=scale, C=C, M=M, L=L),
      grid=(H, B, M),
      in_specs=specs,
      out_specs=[pl.BlockSpec((None, C, None, V), lambda h, b, n: (b, chunk(n), h, 0)),
                 pl.BlockSpec((None, None, C), lambda h, b, n: (b, h, chunk(n)))],
      out_shape=[jax.ShapeDtypeStruct((B, Tp, H, V), v_BTGV.dtype),
                 jax.ShapeDtypeStruct((B, H, Tp), jnp.float32)],
      compiler_params=pltriton.CompilerParams(**config._asdict()),
      interpret=interpret,
      name="path_attention_fwd",
  )(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT)
  res = (qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, o_BTHV, lse_BHT)
  return o_BTHV, res


def _attend_bwd(scale, C, config, interpret, res, do_BTHV):
  qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, o_BTHV, lse_BHT = res
  B, H, L, Tp, K = qlv_BHLTK.shape
  G, V, M = klv_BGLTK.shape[1], v_BTGV.shape[-1], Tp // C
  R = H // G
  delta_BHT = jnp.einsum("bthv,bthv->bht", o_BTHV.astype(jnp.float32),
                         do_BTHV.astype(jnp.float32))
  do_BTHV = do_BTHV.astype(o_BTHV.dtype)
  args = (qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, do_BTHV, lse_BHT, delta_BHT)
  common = dict(scale=scale, C=C, M=M, L=L)
  flags = dict(gate=gate_BHT is not None, seg=seg_BT is not None)
  params = pltriton.CompilerParams(**config._asdict())

  specs, chunk = _specs(B, H, G, L, Tp, C, K, V, M, key_major=False, **flags)
  here = [pl.BlockSpec((None, C, None, V), lambda h, b, n: (b, chunk(n), h, 0)),
          pl.BlockSpec((None, None, C), lambda h, b, n: (b, h, chunk(n))),
          pl.BlockSpec((None, None, C), lambda h, b, n: (b, h, chunk(n)))]
  dqlv_BHLTK, dz_BHTC, dgq_BHT = pl.pallas_call(
      functools.partial(_dq_kernel, **common),
      grid=(H, B, M),
      in_specs=specs + here,
      out_specs=[pl.BlockSpec((None, None, L, C, K), lambda h, b, n: (b, h, 0, chunk(n), 0)),
                 pl.BlockSpec((None, None, C, C), lambda h, b, n: (b, h, chunk(n), 0)),
                 pl.BlockSpec((None, None, C), lambda h, b, n: (b, h, chunk(n)))],
      out_shape=[jax.ShapeDtypeStruct(qlv_BHLTK.shape, qlv_BHLTK.dtype),
                 jax.ShapeDtypeStruct(z_BHTC.shape, z_BHTC.dtype),
                 jax.ShapeDtypeStruct((B, H, Tp), jnp.float32)],
      compiler_params=params,
      interpret=interpret,
      name="path_attention_bwd_dq",
  )(*args)

  specs, chunk = _specs(B, H, G, L, Tp, C, K, V, M, key_major=True, **flags)
  full = [pl.BlockSpec((None, Tp, None, V), lambda h, b, n: (b, 0, h, 0)),
          pl.BlockSpec((None, None, Tp), lambda h, b, n: (b, h, 0)),
          pl.BlockSpec((None, None, Tp), lambda h, b, n: (b, h, 0))]
  dklv_BHLTK, dv_BTHV, dgk_BHT = pl.pallas_call(
      functools.partial(_dkv_kernel, **common),
      grid=(H, B, M),
      in_specs=specs + full,
      out_specs=[pl.BlockSpec((None, None, L, C, K), lambda h, b, n: (b, h, 0, n, 0)),
                 pl.BlockSpec((None, C, None, V), lambda h, b, n: (b, n, h, 0)),
                 pl.BlockSpec((None, None, C), lambda h, b, n: (b, h, n))],
      out_shape=[jax.ShapeDtypeStruct((B, H, L, Tp, K), jnp.float32),
                 jax.ShapeDtypeStruct((B, Tp, H, V), jnp.float32),
                 jax.ShapeDtypeStruct((B, H, Tp), jnp.float32)],
      compiler_params=params,
      interpret=interpret,
      name="path_attention_bwd_dkv",
  )(*args)

  dklv_BGLTK = dklv_BHLTK.reshape(B, G, R, L, Tp, K).sum(2).astype(klv_BGLTK.dtype)
  dv_BTGV = dv_BTHV.reshape(B, Tp, G, R, V).sum(3).astype(v_BTGV.dtype)
  dgate_BHT = None if gate_BHT is None else (dgq_BHT + dgk_BHT).astype(gate_BHT.dtype)
  return dqlv_BHLTK, dklv_BGLTK, dz_BHTC, dv_BTGV, dgate_BHT, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _tileable(n):
  return isinstance(n, int) and n >= 16 and not n & (n - 1)


def supports(head_dim, value_dim, block_size):
  """Whether the kernels take these sizes (Triton tiles: powers of two >= 16)."""
  return _tileable(head_dim) and _tileable(value_dim) and _tileable(block_size)


def path_attention(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, *, g_BTH=None, segment_ids_BT=None,
                   scale=None, block_size=64, return_k_cache=False, interpret=False,
                   config=KernelConfig()):
  """PaTH attention with the semantics and outputs of `lloglin.ops.path.path_blockwise`.

  Differentiable (XLA preprocessing by autodiff, Pallas forward/backward kernels by custom_vjp).
  `interpret=True` runs the kernels through Pallas' interpreter (CPU tests). `block_size` (the
  UT chunk and the kernels' tile) and the head dims must be powers of two >= 16 (Triton tiles);
  T need not be a multiple of `block_size` (the tail chunk is zero-padded). `segment_ids_BT`
  (packed documents numbered from 1, 0 = padding) is handled inside the kernels. `config`: the
  kernels' launch parameters (KernelConfig).
  """
  if not _tileable(block_size):
    raise ValueError(f"block_size: expected a power of two >= 16, got {block_size!r}")
  (B, T, H, G, K, V), arrays, acc, scale, gate_BTH = _prepare(
      q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, scale)
  for name, d in (("q_BTHK", K), ("v_BTGV", V)):
    if not _tileable(d):
      raise ValueError(f"{name}: expected a head dim that is a power of two >= 16, got {d}")
  q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG = arrays
  C = block_size
  M = -(-T // C)
  pad = lambda x: jnp.pad(x, [(0, 0), (0, M * C - T)] + [(0, 0)] * (x.ndim - 2))
  qlv_BHLTK, klv_BGLTK, z_BHTC, chunked = _preprocess(
      pad(q_BTHK), pad(k_BTGK), pad(w_BTGK), pad(beta_BTG), C, M, acc)
  gate_BHT = None if gate_BTH is None else pad(gate_BTH.astype(jnp.float32)).swapaxes(1, 2)
  seg_BT = None if segment_ids_BT is None else pad(segment_ids_BT.astype(jnp.int32))
  o_BTHV = _attend(qlv_BHLTK, klv_BGLTK, z_BHTC, pad(v_BTGV), gate_BHT, seg_BT, float(scale), C,
                   KernelConfig(*config), bool(interpret))[:, :T]
  if not return_k_cache:
    return o_BTHV
  # Keys at their chunk end are rounded to k's dtype first, as in path_blockwise.
  kn_BGMCK, w_BGMCK, u_BGMCK = chunked
  kn_BGMCK = kn_BGMCK.astype(k_BTGK.dtype).astype(acc)
  k_end_BTGK = _keys_to_end(*(x.transpose(0, 2, 1, 3, 4) for x in (kn_BGMCK, w_BGMCK, u_BGMCK)))
  return o_BTHV, k_end_BTGK[:, :T].astype(k_BTGK.dtype)
