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
Pallas kernel.
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
  """Triton launch parameters of the three PaTH kernels (the tile is `block_size`). Default: those
  of every H200 figure in benchmarks/RESULTS.md so far (not swept yet: `bench_mixers.py
  --kernel_configs` with the PaTH mixers sweeps block_size, num_warps, num_stages)."""
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
  """Level-0 copies, the segment tree of chunk products and the in-chunk logits (T = M * C).

  Returns qhat_BGRMCK (queries at their chunk start), kn_BGMCK (keys at their chunk end), the
  tree tree_BGNKK (all in acc), z_BHTC (float32) and, for the decode cache, (kn, w, u).
  """
  B, T, H, K = q_BTHK.shape
  G = k_BTGK.shape[2]
  R, L = H // G, _num_levels(M)
  ein = functools.partial(jnp.einsum, precision=_copy_precision(q_BTHK.dtype))
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

  # Segment tree of aligned block products, level s: blk[a] = P_{(a+1)2^s - 1} ... P_{a 2^s},
  # chunks padded with identities to 2^L; the levels are concatenated (offsets: _tree_index).
  eye_KK = jnp.eye(K, dtype=acc)
  p_BGMKK = eye_KK - hi("bgmck,bgmcl->bgmkl", w_BGMCK, u_BGMCK)
  blk = [jnp.concatenate([p_BGMKK, jnp.broadcast_to(eye_KK, (B, G, 2**L - M, K, K))], axis=2)]
  for _ in range(L - 1):
    blk.append(ein("bgakl,bgalm->bgakm", blk[-1][:, :, 1::2], blk[-1][:, :, 0::2]))
  z_BHTC = z_BGRMCC.reshape(B, H, T, C).astype(jnp.float32)
  return qhat_BGRMCK, kn_BGMCK, jnp.concatenate(blk, axis=2), z_BHTC, (kn_BGMCK, w_BGMCK, u_BGMCK)


def _copy_precision(dtype):
  """HIGHEST for float32 inputs; default (TF32) for 16-bit ones, whose copies are rounded anyway."""
  return "highest" if jnp.dtype(dtype).itemsize >= 4 else None


def _cross(x_XMCK, tree_BGNKK, s, *, query, precision):
  """Copies at level s -> level s + 1 (s may be traced).

  Queries whose chunk has bit s set cross the aligned block of 2^s chunks just below their
  boundary (`x P`); keys whose chunk has bit s clear cross the block just above (`x P^T`); the
  other rows pass through. The blocks are gathered per chunk from the flat tree.
  """
  M = x_XMCK.shape[-3]
  L = (tree_BGNKK.shape[2] + 2).bit_length() - 2  # the tree holds 2^(L+1) - 2 blocks
  c_M = jnp.arange(M)
  moves_M = ((c_M >> s) & 1) == (1 if query else 0)
  start = 2 ** (L + 1) - jnp.left_shift(2, L - s)  # level s's offset in the flat tree
  idx_M = jnp.where(moves_M, start + (c_M >> s) + (-1 if query else 1), 0)
  blk_BGMKK = jnp.take(tree_BGNKK, idx_M, axis=2)
  if query:
    y = jnp.einsum("bgrmck,bgmkl->bgrmcl", x_XMCK, blk_BGMKK, precision=precision)
  else:
    y = jnp.einsum("bgmck,bgmlk->bgmcl", x_XMCK, blk_BGMKK, precision=precision)
  return jnp.where(moves_M[:, None, None], y, x_XMCK)


def _level_inputs(s, q_BGRMCK, k_BGMCK, dtypes):
  """A level's copies in the kernels' layout and dtypes: [B, H, T, K] and [B, G, T, K]."""
  B, G, R, M, C, K = q_BGRMCK.shape
  return (jnp.full((1,), s, jnp.int32), q_BGRMCK.reshape(B, G * R, M * C, K).astype(dtypes[0]),
          k_BGMCK.reshape(B, G, M * C, K).astype(dtypes[1]))


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


def _causal(C):
  return jnp.arange(C)[:, None] >= jnp.arange(C)[None, :]


def _fwd_kernel(lv_ref, q_ref, k_ref, z_ref, v_ref, g_ref, seg_ref, stats_refs, m_out, l_out,
                acc_out, *, scale, C, M):
  """One query chunk of one head at one level: the key chunks below its level boundary, added
  to the running softmax (m, l, acc); the first call (z given) starts from the diagonal tile."""
  i = M - 1 - pl.program_id(2)
  lv = lv_ref[0]
  qk_scale = scale * _LOG2E
  rows = pl.ds(i * C, C)
  gq_C, sq_C = _opt(g_ref, rows), _opt(seg_ref, rows)
  if z_ref is not None:
    s_CC = _tile(z_ref[...], gq_C, gq_C, sq_C, sq_C, qk_scale, _causal(C))
    m_C = jnp.max(s_CC, axis=1)
    p_CC = jnp.exp2(s_CC - m_C[:, None])
    carry = m_C, jnp.sum(p_CC, axis=1), _dot(p_CC.astype(v_ref.dtype), v_ref[rows, :])
  else:
    carry = tuple(ref[...] for ref in stats_refs)
  mid = (i >> lv) << lv
  q_CK = q_ref[rows, :]

  def step(t, carry):
    m_C, l_C, o_CV = carry
    cols = pl.ds((mid - 1 - t) * C, C)
    s_CC = _tile(_dot(q_CK, k_ref[cols, :], trans_b=True), gq_C, _opt(g_ref, cols),
                 sq_C, _opt(seg_ref, cols), qk_scale)
    m_new_C = jnp.maximum(m_C, jnp.max(s_CC, axis=1))
    alpha_C = jnp.exp2(m_C - m_new_C)
    p_CC = jnp.exp2(s_CC - m_new_C[:, None])
    l_C = alpha_C * l_C + jnp.sum(p_CC, axis=1)
    o_CV = alpha_C[:, None] * o_CV + _dot(p_CC.astype(v_ref.dtype), v_ref[cols, :])
    return m_new_C, l_C, o_CV

  m_out[...], l_out[...], acc_out[...] = jax.lax.fori_loop(0, ((i >> lv) & 1) << lv, step, carry)


def _dq_kernel(lv_ref, q_ref, k_ref, z_ref, v_ref, g_ref, seg_ref, do_ref, lse_ref, delta_ref,
               dq_ref, dgq_ref, dz_ref, *, scale, C, M):
  """dQ of one query chunk of one head at one level and its gate row sums; with z given (the
  first call), also the diagonal tile's dz and row sums."""
  i = M - 1 - pl.program_id(2)
  lv = lv_ref[0]
  qk_scale = scale * _LOG2E
  rows = pl.ds(i * C, C)
  gq_C, sq_C = _opt(g_ref, rows), _opt(seg_ref, rows)
  do_CV, lse_C, delta_C = do_ref[...], lse_ref[...], delta_ref[...]

  def grad_logits(s_CC, v_CV):
    """dS = P (dO v^T - delta), the gradient w.r.t. the natural-unit logits."""
    p_CC = jnp.exp2(s_CC - lse_C[:, None])
    return p_CC * (_dot(do_CV, v_CV, trans_b=True) - delta_C[:, None])

  dg_C = jnp.zeros((C,), jnp.float32)
  if z_ref is not None:
    ds_CC = grad_logits(_tile(z_ref[...], gq_C, gq_C, sq_C, sq_C, qk_scale, _causal(C)),
                        v_ref[rows, :])
    dz_ref[...] = scale * ds_CC
    dg_C = jnp.sum(ds_CC, axis=1)
  mid = (i >> lv) << lv
  q_CK = q_ref[rows, :]

  def step(t, carry):
    dq_CK, dg_C = carry
    cols = pl.ds((mid - 1 - t) * C, C)
    k_CK = k_ref[cols, :]
    s_CC = _tile(_dot(q_CK, k_CK, trans_b=True), gq_C, _opt(g_ref, cols), sq_C,
                 _opt(seg_ref, cols), qk_scale)
    ds_CC = grad_logits(s_CC, v_ref[cols, :])
    return dq_CK + _dot(ds_CC.astype(k_CK.dtype), k_CK), dg_C + jnp.sum(ds_CC, axis=1)

  dq_CK, dg_C = jax.lax.fori_loop(0, ((i >> lv) & 1) << lv, step,
                                  (jnp.zeros(q_CK.shape, jnp.float32), dg_C))
  dq_ref[...] = scale * dq_CK
  dgq_ref[...] = scale * dg_C


def _dkv_kernel(lv_ref, q_ref, k_ref, z_ref, v_ref, g_ref, seg_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, dgk_ref, *, scale, C, M):
  """dK, dv and the gate column sums of one key chunk, for one query head at one level; with z
  given (the first call), the diagonal tile's dv and column sums too."""
  j = pl.program_id(2)
  lv = lv_ref[0]
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

  dv_CV = jnp.zeros(v_CV.shape, jnp.float32)
  dg_C = jnp.zeros((C,), jnp.float32)
  if z_ref is not None:
    p_CC, ds_CC, do_CV = grads(
        _tile(z_ref[...], gk_C, gk_C, sk_C, sk_C, qk_scale, _causal(C)), cols)
    dv_CV = _dot(p_CC.astype(do_CV.dtype), do_CV, trans_a=True)
    dg_C = jnp.sum(ds_CC, axis=0)
  start = ((j >> lv) + 1) << lv  # first query chunk above j's boundary at this level
  k_CK = k_ref[cols, :]

  def step(t, carry):
    dk_CK, dv_CV, dg_C = carry
    rows = pl.ds((start + t) * C, C)
    q_CK = q_ref[rows, :]
    s_CC = _tile(_dot(q_CK, k_CK, trans_b=True), _opt(g_ref, rows), gk_C, _opt(seg_ref, rows),
                 sk_C, qk_scale)
    p_CC, ds_CC, do_CV = grads(s_CC, rows)
    dv_CV = dv_CV + _dot(p_CC.astype(do_CV.dtype), do_CV, trans_a=True)
    dk_CK = dk_CK + _dot(ds_CC.astype(q_CK.dtype), q_CK, trans_a=True)
    return dk_CK, dv_CV, dg_C + jnp.sum(ds_CC, axis=0)

  trips = (1 - ((j >> lv) & 1)) * jnp.clip(M - start, 0, 1 << lv)
  dk_CK, dv_CV, dg_C = jax.lax.fori_loop(
      0, trips, step, (jnp.zeros(k_CK.shape, jnp.float32), dv_CV, dg_C))
  dk_ref[...] = scale * dk_CK
  dv_ref[...] = dv_CV
  dgk_ref[...] = -scale * dg_C


class _Call(NamedTuple):
  """Static sizes and options shared by the level calls of one attention."""
  B: int
  H: int
  G: int
  Tp: int
  C: int
  K: int
  V: int
  scale: float
  config: KernelConfig
  interpret: bool

  @property
  def M(self):
    return self.Tp // self.C

  def specs(self, *, first, gate, seg, key_major):
    """BlockSpecs of the shared inputs (level, q, k, z, v, gate, seg) on grid (H, B, M)."""
    R, M, C, Tp = self.H // self.G, self.M, self.C, self.Tp
    chunk = (lambda n: n) if key_major else (lambda n: M - 1 - n)
    specs = [
        pl.BlockSpec((1,), lambda h, b, n: (0,)),
        pl.BlockSpec((None, None, Tp, self.K), lambda h, b, n: (b, h, 0, 0)),
        pl.BlockSpec((None, None, Tp, self.K), lambda h, b, n: (b, h // R, 0, 0)),
        pl.BlockSpec((None, None, C, C), lambda h, b, n: (b, h, chunk(n), 0)) if first else None,
        pl.BlockSpec((None, C, None, self.V), lambda h, b, n: (b, chunk(n), h // R, 0))
        if key_major else pl.BlockSpec((None, Tp, None, self.V), lambda h, b, n: (b, 0, h // R, 0)),
        pl.BlockSpec((None, None, Tp), lambda h, b, n: (b, h, 0)) if gate else None,
        pl.BlockSpec((None, Tp), lambda h, b, n: (b, 0)) if seg else None,
    ]
    return specs, chunk

  def __call__(self, kernel, name, in_specs, out_specs, out_shape, *args):
    return pl.pallas_call(
        functools.partial(kernel, scale=self.scale, C=self.C, M=self.M),
        grid=(self.H, self.B, self.M), in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape, compiler_params=pltriton.CompilerParams(**self.config._asdict()),
        interpret=self.interpret, name=name)(*args)


def _fwd_level(call, lv, q_BHTK, k_BGTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, stats):
  """The forward kernel at one level; `stats` = (m_BHT, l_BHT, acc_BTHV), None on the first."""
  B, H, Tp, V = call.B, call.H, call.Tp, call.V
  specs, chunk = call.specs(first=stats is None, gate=gate_BHT is not None,
                            seg=seg_BT is not None, key_major=False)
  row = pl.BlockSpec((None, None, call.C), lambda h, b, n: (b, h, chunk(n)))
  acc = pl.BlockSpec((None, call.C, None, V), lambda h, b, n: (b, chunk(n), h, 0))
  stat_specs = [row, row, acc]
  in_stats = None if stats is None else tuple(stat_specs)
  shapes = [jax.ShapeDtypeStruct((B, H, Tp), jnp.float32)] * 2 + [
      jax.ShapeDtypeStruct((B, Tp, H, V), jnp.float32)]
  return tuple(call(_fwd_kernel, "path_attention_fwd", specs + [in_stats], stat_specs, shapes,
                    lv, q_BHTK, k_BGTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, stats))


def _bwd_level(call, lv, q_BHTK, k_BGTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, do_BTHV, lse_BHT,
               delta_BHT):
  """The dq and dkv kernels at one level (the first: z given, also the diagonal tiles).

  Returns dq_BHTK, dk_BHTK (per query head), dv_BTHV, dgate_BHT (float32) and dz_BHTC or None.
  """
  B, H, Tp, C, K, V = call.B, call.H, call.Tp, call.C, call.K, call.V
  first = z_BHTC is not None
  flags = dict(first=first, gate=gate_BHT is not None, seg=seg_BT is not None)
  args = (lv, q_BHTK, k_BGTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, do_BTHV, lse_BHT, delta_BHT)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731

  specs, chunk = call.specs(key_major=False, **flags)
  row = pl.BlockSpec((None, None, C), lambda h, b, n: (b, h, chunk(n)))
  here = [pl.BlockSpec((None, C, None, V), lambda h, b, n: (b, chunk(n), h, 0)), row, row]
  dq_BHTK, dgq_BHT, dz_BHTC = call(
      _dq_kernel, "path_attention_bwd_dq", specs + here,
      [pl.BlockSpec((None, None, C, K), lambda h, b, n: (b, h, chunk(n), 0)), row,
       pl.BlockSpec((None, None, C, C), lambda h, b, n: (b, h, chunk(n), 0)) if first else None],
      [f32(B, H, Tp, K), f32(B, H, Tp), f32(B, H, Tp, C) if first else None], *args)

  specs, _ = call.specs(key_major=True, **flags)
  full = [pl.BlockSpec((None, Tp, None, V), lambda h, b, n: (b, 0, h, 0)),
          pl.BlockSpec((None, None, Tp), lambda h, b, n: (b, h, 0)),
          pl.BlockSpec((None, None, Tp), lambda h, b, n: (b, h, 0))]
  dk_BHTK, dv_BTHV, dgk_BHT = call(
      _dkv_kernel, "path_attention_bwd_dkv", specs + full,
      [pl.BlockSpec((None, None, C, K), lambda h, b, n: (b, h, n, 0)),
       pl.BlockSpec((None, C, None, V), lambda h, b, n: (b, n, h, 0)),
       pl.BlockSpec((None, None, C), lambda h, b, n: (b, h, n))],
      [f32(B, H, Tp, K), f32(B, Tp, H, V), f32(B, H, Tp)], *args)
  return dq_BHTK, dk_BHTK, dv_BTHV, dgq_BHT + dgk_BHT, dz_BHTC


# ---------------------------------------------------------------- custom_vjp -------------------
# The copies of level s + 1 are those of level s after one `_cross`. The forward carries them up
# through the levels, one level's copies alive at a time. The backward runs the levels downward,
# rebuilding each level's copies from level 0 (s crosses, O(L^2) block products in all) and
# chaining the copies' cotangents back through `_cross`: memory stays linear in T.

@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _attend(qhat_BGRMCK, kn_BGMCK, tree_BGNKK, z_BHTC, v_BTGV, gate_BHT, seg_BT, call, dtypes):
  return _attend_fwd(qhat_BGRMCK, kn_BGMCK, tree_BGNKK, z_BHTC, v_BTGV, gate_BHT, seg_BT, call,
                     dtypes)[0]


def _attend_fwd(qhat_BGRMCK, kn_BGMCK, tree_BGNKK, z_BHTC, v_BTGV, gate_BHT, seg_BT, call,
                dtypes):
  L = _num_levels(call.M)
  cross = functools.partial(_cross, tree_BGNKK=tree_BGNKK, precision=_copy_precision(dtypes[0]))
  fixed = (v_BTGV, gate_BHT, seg_BT)
  stats = _fwd_level(call, *_level_inputs(0, qhat_BGRMCK, kn_BGMCK, dtypes), z_BHTC, *fixed, None)

  def level(s, carry):
    q_BGRMCK = cross(carry[0], s=s - 1, query=True)
    k_BGMCK = cross(carry[1], s=s - 1, query=False)
    lv, q_BHTK, k_BGTK = _level_inputs(s, q_BGRMCK, k_BGMCK, dtypes)
    return q_BGRMCK, k_BGMCK, _fwd_level(call, lv, q_BHTK, k_BGTK, None, *fixed, carry[2])

  _, _, (m_BHT, l_BHT, acc_BTHV) = jax.lax.fori_loop(
      1, L, level, (qhat_BGRMCK, kn_BGMCK, stats))
  o_BTHV = (acc_BTHV / l_BHT.swapaxes(1, 2)[..., None]).astype(v_BTGV.dtype)
  lse_BHT = m_BHT + jnp.log2(l_BHT)
  res = (qhat_BGRMCK, kn_BGMCK, tree_BGNKK, z_BHTC, v_BTGV, gate_BHT, seg_BT, o_BTHV, lse_BHT)
  return o_BTHV, res


def _attend_bwd(call, dtypes, res, do_BTHV):
  qhat_BGRMCK, kn_BGMCK, tree_BGNKK, z_BHTC, v_BTGV, gate_BHT, seg_BT, o_BTHV, lse_BHT = res
  B, G, R, M, C, K = qhat_BGRMCK.shape
  L = _num_levels(M)
  delta_BHT = jnp.einsum("bthv,bthv->bht", o_BTHV.astype(jnp.float32),
                         do_BTHV.astype(jnp.float32))
  fixed = (v_BTGV, gate_BHT, seg_BT, do_BTHV.astype(o_BTHV.dtype), lse_BHT, delta_BHT)
  cross = functools.partial(_cross, precision=_copy_precision(dtypes[0]))

  def level(s, q_BGRMCK, k_BGMCK, z_BHTC, carry):
    """Adds level s's gradients; carry[:2] = cotangents of level s + 1's copies -> level s's."""
    gq_BGRMCK, gk_BGMCK, dtree_BGNKK, dv_BTHV, dgate_BHT = carry
    dq_BHTK, dk_BHTK, dv_l, dgate_l, dz_BHTC = _bwd_level(
        call, *_level_inputs(s, q_BGRMCK, k_BGMCK, dtypes), z_BHTC, *fixed)
    up_q, dtree_q = jax.vjp(lambda x, t: cross(x, t, s, query=True), q_BGRMCK, tree_BGNKK)[1](
        gq_BGRMCK)
    up_k, dtree_k = jax.vjp(lambda x, t: cross(x, t, s, query=False), k_BGMCK, tree_BGNKK)[1](
        gk_BGMCK)
    return (dq_BHTK.reshape(qhat_BGRMCK.shape) + up_q,
            dk_BHTK.reshape(B, G, R, M, C, K).sum(2) + up_k,
            dtree_BGNKK + dtree_q + dtree_k, dv_BTHV + dv_l, dgate_BHT + dgate_l), dz_BHTC

  def upper_level(n, carry):
    s = L - 1 - n
    climb = lambda query: lambda u, x: cross(x, tree_BGNKK, u, query=query)  # noqa: E731
    q_BGRMCK = jax.lax.fori_loop(0, s, climb(True), qhat_BGRMCK)
    k_BGMCK = jax.lax.fori_loop(0, s, climb(False), kn_BGMCK)
    return level(s, q_BGRMCK, k_BGMCK, None, carry)[0]

  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)  # noqa: E731
  carry = (zeros(qhat_BGRMCK), zeros(kn_BGMCK), zeros(tree_BGNKK), zeros(o_BTHV),
           zeros(lse_BHT))
  carry = jax.lax.fori_loop(0, L - 1, upper_level, carry)
  (dqhat, dkn, dtree, dv_BTHV, dgate_BHT), dz_BHTC = level(0, qhat_BGRMCK, kn_BGMCK, z_BHTC,
                                                           carry)
  dv_BTGV = dv_BTHV.reshape(B, M * C, G, R, -1).sum(3).astype(v_BTGV.dtype)
  dgate_BHT = None if gate_BHT is None else dgate_BHT.astype(gate_BHT.dtype)
  return dqhat, dkn, dtree, dz_BHTC, dv_BTGV, dgate_BHT, None


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
  qhat_BGRMCK, kn_BGMCK, tree_BGNKK, z_BHTC, chunked = _preprocess(
      pad(q_BTHK), pad(k_BTGK), pad(w_BTGK), pad(beta_BTG), C, M, acc)
  gate_BHT = None if gate_BTH is None else pad(gate_BTH.astype(jnp.float32)).swapaxes(1, 2)
  seg_BT = None if segment_ids_BT is None else pad(segment_ids_BT.astype(jnp.int32))
  call = _Call(B, H, G, M * C, C, K, V, float(scale), KernelConfig(*config), bool(interpret))
  o_BTHV = _attend(qhat_BGRMCK, kn_BGMCK, tree_BGNKK, z_BHTC, pad(v_BTGV), gate_BHT, seg_BT, call,
                   (q_BTHK.dtype, k_BTGK.dtype))[:, :T]
  if not return_k_cache:
    return o_BTHV
  # Keys at their chunk end are rounded to k's dtype first, as in path_blockwise.
  kn_BGMCK, w_BGMCK, u_BGMCK = chunked
  kn_BGMCK = kn_BGMCK.astype(k_BTGK.dtype).astype(acc)
  k_end_BTGK = _keys_to_end(*(x.transpose(0, 2, 1, 3, 4) for x in (kn_BGMCK, w_BGMCK, u_BGMCK)))
  return o_BTHV, k_end_BTGK[:, :T].astype(k_BTGK.dtype)
