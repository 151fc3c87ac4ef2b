"""PaTH attention as Pallas kernels (Triton lowering), forward and backward.

Same math, arguments and outputs as `lloglin.ops.path.path_blockwise` (see that module for the
definition of PaTH and PaTH-FoX).

Backend: `pl.pallas_call` lowered through Pallas' Triton backend
(`compiler_params=pltriton.CompilerParams`), deprecated in jax 0.11 but shipped; it lowers for
Hopper and runs in interpret mode on CPU. With KernelConfig(backend='mosaic') the three kernels run
on Mosaic GPU instead (kernel_mgpu.py: TMA, WGMMA), the same sums.

Algorithm (docs/algorithms/path.md#householder-products-and-the-ut-transform). Chunks of C tokens;
chunk c has the compact-WY product `P_c = I - W_c^T u_c` (`u = T diag(beta) W`, `T` the UT factor),
acting on query rows from the right and on key columns from the left. The logit of query chunk i and
key chunk j < i is `qhat_i P_{i-1} ... P_{j+1} knew_j^T` (query moved to its chunk start, key to its
chunk end). Instead of carrying each query across every key chunk (whose backward would need the
carried queries in reverse order, O(T^2) memory), every pair meets at one boundary: the middle of
the smallest aligned dyadic block of chunks holding both, level `l = bit_length(i ^ j)`. Each token
gets one query copy and one key copy per level, moved to that level's boundary with dense K x K
products of aligned chunk blocks (a segment tree over chunks, built with XLA matmuls):

  Q^l_i = qhat_i P_{i-1} ... P_{mid}       (bit l-1 of i set, mid = i with bits < l-1 cleared)
  K^l_j = knew_j (P_{end-1} ... P_{j+1})^T (bit l-1 of j clear, end = the end of j's block)
  z_ij  = Q^l_i . K^l_j                    (exact; l = bit_length(i ^ j))

so the kernels are block-sparse FlashAttention over precomputed copies, with the in-chunk tile
`tril(Q K^T - tril(Q W^T) x)` (x = T diag(beta) SL(W K^T)) precomputed per chunk. Memory is
O(T (K log(T/C) + C)) per head plus O(T K^2 / C) per key head; no T x T matrix exists.

  _copies       XLA, differentiable by autodiff: the chunk pieces (common.chunk_pieces), then
                every level's copies Q^l, K^l.
  _attend       custom_vjp. Forward kernel: per (head, batch, query chunk), diagonal tile, then
                every level's key chunks, online softmax in exp2 with fp32 statistics; saves the
                log-sum-exp. Backward kernels (FlashAttention-2 split): dq (per query chunk:
                dQ^l, dz, gate row sums) and dkv (per key chunk: dK^l, dv, gate column sums).
Gate and segment masks act on exponents. Matmul operands in the input dtype (bf16 on GPU),
accumulation in float32; the copies are built at HIGHEST precision for float32 inputs and at
default (TF32) precision for 16-bit inputs.

Status: slower than fla's parallel_path_attn, and compiled fwd+bwd memory grows as T log T
(benchmarks/RESULTS.md#path-attention). XLA's cost model puts most of the bytes in `_copies` and
its autodiff (copies per level), so the next step is building the copies (and their backward) in
a Pallas kernel. For long contexts where memory binds: `linear_memory.path_attention_linear_memory`
(one level's copies at a time: memory linear in T, slower).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.path import kernel_mgpu
from pallas_kernels.path.common import (
    KernelConfig, copy_precision, diagonal_dkv, diagonal_tile, dkv_step, dq_step,
    keys_below, num_levels, output_delta, probs, queries_above, run, segment_tree, softmax_start,
    softmax_step, sum_groups, token_side)

# ---------------------------------------------------------------- copies (XLA) -----------------

def _copies(chunks, dtypes):
  """Every level's query / key copies, qlv_BHLTK and klv_BGLTK (in the dtypes of q and k)."""
  B, G, R, M, C, K = chunks.qhat_BGRMCK.shape
  L = num_levels(M)
  precision = copy_precision(dtypes[0])
  blk = segment_tree(chunks.w_BGMCK, chunks.u_BGMCK, L, precision)
  ein = functools.partial(jnp.einsum, precision=precision)
  qlv, klv = [], []
  q_cur, k_cur = chunks.qhat_BGRMCK, chunks.kn_BGMCK
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
  qlv_BHLTK = jnp.stack(qlv, 3).reshape(B, G * R, L, M * C, K).astype(dtypes[0])
  klv_BGLTK = jnp.stack(klv, 2).reshape(B, G, L, M * C, K).astype(dtypes[1])
  return qlv_BHLTK, klv_BGLTK


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

def _fwd_kernel(qlv_ref, klv_ref, z_ref, v_ref, g_ref, seg_ref, o_ref, lse_ref, *, scale, qk_scale,
                C, M, L):
  """One query chunk of one head: diagonal tile, then the key chunks of every level."""
  i = M - 1 - pl.program_id(2)
  rows = pl.ds(i * C, C)
  here = token_side(g_ref, seg_ref, rows)
  carry = softmax_start(diagonal_tile(z_ref[...], here, qk_scale), v_ref[rows, :])

  def level(lv, carry):
    mid, trips = keys_below(i, lv)
    q_CK = qlv_ref[lv, rows, :]

    def step(t, carry):
      cols = pl.ds((mid - 1 - t) * C, C)
      return softmax_step(carry, q_CK, klv_ref[lv, cols, :], v_ref[cols, :], here,
                           token_side(g_ref, seg_ref, cols), qk_scale)

    return jax.lax.fori_loop(0, trips, step, carry)

  m_C, l_C, o_CV = jax.lax.fori_loop(0, L, level, carry)
  o_ref[...] = (o_CV / l_C[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m_C + jnp.log2(l_C)


def _dq_kernel(qlv_ref, klv_ref, z_ref, v_ref, g_ref, seg_ref, do_ref, lse_ref, delta_ref,
               dqlv_ref, dz_ref, dgq_ref, *, scale, qk_scale, C, M, L):
  """dQ^l (all levels), dz and the gate row sums of one query chunk of one head."""
  i = M - 1 - pl.program_id(2)
  rows = pl.ds(i * C, C)
  here = token_side(g_ref, seg_ref, rows)
  stats = (lse_ref[...], delta_ref[...], do_ref[...])
  _, ds_CC = probs(diagonal_tile(z_ref[...], here, qk_scale), v_ref[rows, :], stats)
  dz_ref[...] = scale * ds_CC

  def level(lv, dg_C):
    mid, trips = keys_below(i, lv)
    q_CK = qlv_ref[lv, rows, :]

    def step(t, carry):
      cols = pl.ds((mid - 1 - t) * C, C)
      return dq_step(carry, q_CK, klv_ref[lv, cols, :], v_ref[cols, :], here,
                      token_side(g_ref, seg_ref, cols), qk_scale, stats)

    dq_CK, dg_C = jax.lax.fori_loop(0, trips, step, (jnp.zeros(q_CK.shape, jnp.float32), dg_C))
    dqlv_ref[lv, :, :] = (scale * dq_CK).astype(dqlv_ref.dtype)
    return dg_C

  dgq_ref[...] = scale * jax.lax.fori_loop(0, L, level, jnp.sum(ds_CC, axis=1))


def _dkv_kernel(qlv_ref, klv_ref, z_ref, v_ref, g_ref, seg_ref, do_ref, lse_ref, delta_ref,
                dklv_ref, dv_ref, dgk_ref, *, scale, qk_scale, C, M, L):
  """dK^l (all levels), dv and the gate column sums of one key chunk, for one query head."""
  j = pl.program_id(2)
  cols = pl.ds(j * C, C)
  here = token_side(g_ref, seg_ref, cols)
  v_CV = v_ref[...]
  stats = lambda rows: (lse_ref[rows], delta_ref[rows], do_ref[rows, :])  # noqa: E731
  carry = diagonal_dkv(z_ref[...], here, qk_scale, v_CV, stats(cols))

  def level(lv, carry):
    start, trips = queries_above(j, lv, M)
    k_CK = klv_ref[lv, cols, :]

    def step(t, carry):
      rows = pl.ds((start + t) * C, C)
      return dkv_step(carry, qlv_ref[lv, rows, :], k_CK, v_CV, token_side(g_ref, seg_ref, rows),
                       here, qk_scale, stats(rows))

    dk_CK, dv_CV, dg_C = jax.lax.fori_loop(
        0, trips, step, (jnp.zeros(k_CK.shape, jnp.float32),) + carry)
    dklv_ref[lv, :, :] = scale * dk_CK
    return dv_CV, dg_C

  dv_CV, dg_C = jax.lax.fori_loop(0, L, level, carry)
  dv_ref[...] = dv_CV
  dgk_ref[...] = -scale * dg_C


# ---------------------------------------------------------------- custom_vjp -------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attend(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, call):
  return _attend_fwd(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, call)[0]


def _attend_fwd(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, call):
  L = qlv_BHLTK.shape[2]
  res = (qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT)
  if call.config.backend == 'mosaic':
    o_BTHV, lse_BHT = kernel_mgpu.forward(*res, call)
    return o_BTHV, res + (o_BTHV, lse_BHT)
  specs, chunk = call.specs(levels=L, first=True, gate=gate_BHT is not None,
                            seg=seg_BT is not None, key_major=False)
  o_BTHV, lse_BHT = call(
      _fwd_kernel, "path_attention_fwd", specs,
      [call.values_spec(chunk), call.rows_spec(chunk)],
      [jax.ShapeDtypeStruct((call.B, call.Tp, call.H, call.V), v_BTGV.dtype),
       jax.ShapeDtypeStruct((call.B, call.H, call.Tp), jnp.float32)],
      qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, L=L)
  res = (qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, o_BTHV, lse_BHT)
  return o_BTHV, res


def _attend_bwd(call, res, do_BTHV):
  qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, o_BTHV, lse_BHT = res
  B, H, L, Tp, K = qlv_BHLTK.shape
  G = call.G
  delta_BHT = output_delta(o_BTHV, do_BTHV)
  args = (qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, do_BTHV.astype(o_BTHV.dtype),
          lse_BHT, delta_BHT)
  bwd = kernel_mgpu.backward if call.config.backend == 'mosaic' else _triton_bwd
  dqlv_BHLTK, dz_BHTC, dgq_BHT, dklv_BHLTK, dv_BTHV, dgk_BHT = bwd(*args, call)

  dklv_BGLTK = dklv_BHLTK.reshape(B, G, H // G, L, Tp, K).sum(2).astype(klv_BGLTK.dtype)
  dv_BTGV = sum_groups(dv_BTHV, G).astype(v_BTGV.dtype)
  dgate_BHT = None if gate_BHT is None else (dgq_BHT + dgk_BHT).astype(gate_BHT.dtype)
  return dqlv_BHLTK, dklv_BGLTK, dz_BHTC, dv_BTGV, dgate_BHT, None


def _triton_bwd(qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, do_BTHV, lse_BHT,
                delta_BHT, call):
  """The dq and dkv kernels on Triton (kernel_mgpu.backward's arguments and results): dqlv_BHLTK,
  dz_BHTC, dgq_BHT, dklv_BHLTK (per query head), dv_BTHV, dgk_BHT."""
  args = (qlv_BHLTK, klv_BGLTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, do_BTHV, lse_BHT, delta_BHT)
  B, H, L, Tp, K = qlv_BHLTK.shape
  C, V = call.C, call.V
  flags = dict(levels=L, first=True, gate=gate_BHT is not None, seg=seg_BT is not None,
               backward=True)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731

  specs, chunk = call.specs(key_major=False, **flags)
  dq = call(
      _dq_kernel, "path_attention_bwd_dq", specs,
      [pl.BlockSpec((None, None, L, C, K), lambda h, b, n: (b, h, 0, chunk(n), 0)),
       pl.BlockSpec((None, None, C, C), lambda h, b, n: (b, h, chunk(n), 0)),
       call.rows_spec(chunk)],
      [jax.ShapeDtypeStruct(qlv_BHLTK.shape, qlv_BHLTK.dtype), f32(*z_BHTC.shape), f32(B, H, Tp)],
      *args, L=L)

  specs, chunk = call.specs(key_major=True, **flags)
  dkv = call(
      _dkv_kernel, "path_attention_bwd_dkv", specs,
      [pl.BlockSpec((None, None, L, C, K), lambda h, b, n: (b, h, 0, n, 0)),
       call.values_spec(chunk), call.rows_spec(chunk)],
      [f32(B, H, L, Tp, K), f32(B, Tp, H, V), f32(B, H, Tp)], *args, L=L)
  return tuple(dq) + tuple(dkv)


_attend.defvjp(_attend_fwd, _attend_bwd)


def _attend_copies(chunks, v_BTGV, gate_BHT, seg_BT, call, dtypes):
  return _attend(*_copies(chunks, dtypes), chunks.z_BHTC, v_BTGV, gate_BHT, seg_BT, call)


def path_attention(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, *, g_BTH=None, segment_ids_BT=None,
                   scale=None, block_size=64, return_k_cache=False, interpret=False,
                   config=KernelConfig()):
  """PaTH attention with the semantics and outputs of `lloglin.ops.path.path_blockwise`.

  Differentiable (XLA preprocessing by autodiff, Pallas forward/backward kernels by custom_vjp).
  `interpret=True` runs the kernels through Pallas' interpreter (CPU tests). `block_size` (the
  UT chunk and the kernels' tile) and the head dims must be powers of two >= 16 (Triton tiles);
  T need not be a multiple of `block_size` (the tail chunk is zero-padded). `segment_ids_BT`
  (packed documents numbered from 1, 0 = padding) is handled inside the kernels. `config`: the
  kernels' launch parameters (KernelConfig). Memory grows as T log T (every level's copies);
  `path_attention_linear_memory` trades speed for linear memory.
  """
  return run(_attend_copies, q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT,
              scale, block_size, return_k_cache, interpret, config)
