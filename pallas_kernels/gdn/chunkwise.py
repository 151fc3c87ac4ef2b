"""Gated DeltaNet as chunk-parallel Pallas kernels around two sequential state scans
(docs/algorithms/gdn.md#pallas-kernel): everything per chunk, the UT transform included, runs in
kernels parallel over (batch, head, chunk); only the [K, V] state recurrence and its transpose
scan the chunks in order, and they do nothing else.

Per chunk of C tokens and head, with S the state at the chunk start, G the in-chunk inclusive
cumsum of g, gam = e^{G_C}, K2 = e^{G_C - G} o K, E[t, s] = e^{G_t - G_s} on the pairs M (causal,
one document) and Es the same on the strict pairs:

  ut_transform  (parallel)    A = diag(beta) (K K^T o Es),  T = (I + A)^-1 (by 16 x 16 blocks in
                              registers, float32),  W = T diag(beta e^G) K,  U = T diag(beta) V
  state_scan    (sequential)  h_n = S;  Vn = U - rho o (W S);  S <- keep gam S + K2^T (wm o Vn)
  output        (parallel)    O = rho o (e^G o Q) S + (Q K^T o E) Vn

rho / wm / keep are the packed-document masks of the one stream (chunked.py's `_packed_masks`:
read the chunk-start state before the first document start of the chunk, write after the last,
keep when no document starts in it); all ones for aligned rows.

Backward (cotangents dO and dS of the state after the chunk; stored per chunk as dh):

  output_bwd    (parallel)    dVl = (Q K^T o E)^T dO, and the output's terms: the final dQ, its
                              parts of dK and dG (they need only forward quantities and dO)
  state_scan_bwd (sequential) dVn = dVl + wm o (K2 dS);  dS <- keep gam dS + (rho o e^G o Q)^T dO
                              - W^T (rho o dVn)
  chunk_bwd     (parallel)    dK, dV, dbeta and dG from h, dh, Vn, dVn through the state write
                              and the UT transform's transpose (dA = -T^T dT T^T), added to
                              output_bwd's parts; dg = reverse in-chunk cumsum of dG

so no gradient crosses a chunk except through dS, and dg has no sum along the whole sequence.
Matmul operands are the input dtype (bf16 on GPU) with float32 accumulation; T, the carried states,
dG and the outputs' gradients are float32; W, U, h, Vn, dh, dVn are stored in the input dtype (the
dtype the next matmul reads them in). Backend: the Pallas Triton lowering (pl.pallas_call with
pltriton.CompilerParams), as pallas_kernels.mamba2; with KernelConfig(backend='mosaic') every one
of the six runs on Mosaic GPU instead (chunkwise_mgpu.py; 16-bit inputs, chunks and K multiples
of 64; the UT transform chunks of 64), and the kernels of AUTO_MOSAIC do with GDN's default
backend='auto' on a Hopper GPU where they serve (`on_mosaic`). Offsets stay below 2^31: the caller
splits larger batches.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.device import on_hopper_gpu
from pallas_kernels.gdn import chunkwise_mgpu
from pallas_kernels.linear_recurrence import GDN_CONFIG, dot

__all__ = ['Masks', 'chunk_bwd', 'gdn_backward', 'gdn_forward', 'launch', 'output', 'output_bwd',
           'state_scan', 'state_scan_bwd', 'ut_inverse', 'ut_inverse_bwd', 'ut_transform']

f32 = jnp.float32


class Masks(NamedTuple):
  """Per-token masks of packed rows, [B, P]: pos (-1 at padding), doc (document id), rho (reads
  the chunk-start state), wm (its write reaches the chunk end), keep (no document starts in its
  chunk); float32 but pos and doc (int32)."""
  pos: jax.Array
  doc: jax.Array
  rho: jax.Array
  wm: jax.Array
  keep: jax.Array


# ------------------------------------------------------------------------------------------------
# Pieces of the kernel bodies


def _iota(C):
  return (lax.broadcasted_iota(jnp.int32, (C, C), 0), lax.broadcasted_iota(jnp.int32, (C, C), 1))


def _pairs(C, pos=None, doc=None):
  """(causal, strict) [C, C] pair masks: t >= s (t > s), both real and of one document."""
  row, col = _iota(C)
  causal, strict = row >= col, row > col
  if pos is not None:
    real = pos >= 0
    same = (doc[:, None] == doc[None, :]) & real[:, None] & real[None, :]
    causal, strict = causal & same, strict & same
  return causal, strict


def _decay(G, mask):
  """e^{G_t - G_s} on mask, 0 elsewhere (the exponent masked before exp: it is <= 0 there)."""
  return jnp.exp(jnp.where(mask, G[:, None] - G[None, :], -jnp.inf))


def _rev_cumsum(x):
  """sum_{s >= t} x_s (the Triton lowering has no reverse cumsum)."""
  return jnp.sum(x) - jnp.cumsum(x) + x


def _chunk_gates(g):
  """(G, e^G, gam, e^{G_C - G}) of one chunk's log-decays."""
  G = jnp.cumsum(g)
  gs = jnp.sum(g)
  return G, jnp.exp(G), jnp.exp(gs), jnp.exp(gs - G)


def _vblocks(V, BV):
  return [pl.ds(j * BV, BV) for j in range(V // BV)]


# ------------------------------------------------------------------------------------------------
# Kernels (refs in the order of their launchers' in_specs, then out_specs)


SUB = 16   # the UT transform's sub-blocks: the smallest tile of a Triton dot


def _nilpotent_inverse(N, mm_dtype):
  """(I + N)^-1 of a strictly lower triangular float32 [b, b] N (b a power of two) as
  (I - N)(I + N^2)(I + N^4)...: N^b = 0, so the product is the whole series; log2(b) - 1
  squarings, every product a float32 dot (no reductions, no loop)."""
  b = N.shape[0]
  row, col = _iota(b)
  X = (row == col).astype(f32) - N
  P = N
  for _ in range(b.bit_length() - 2):
    P = dot(P, P, f32)
    X = X + dot(X, P, f32)
  return X


def _ut_kernel(*refs, packed, mm_dtype, block_v, with_wu=True):
  """A = diag(beta) (K K^T o Es), T = (I + A)^-1 (float32), W = T diag(beta e^G) K and
  U = T diag(beta) V of one chunk, by SUB x SUB blocks: A's diagonal blocks inverted by
  _nilpotent_inverse, the rest by block forward substitution T_ij = -D_i sum_{j <= m < i} A_im T_mj
  (float32 dots: no reductions, no loop). Without with_wu, T alone (no V input, no W and U)."""
  refs = list(refs)
  k_ref = refs.pop(0)
  v_ref = refs.pop(0) if with_wu else None
  g_ref, beta_ref = refs[:2]
  pos_ref, doc_ref = (refs[2], refs[3]) if packed else (None, None)
  w_ref, u_ref, t_ref = refs[-3:] if with_wu else (None, None, refs[-1])
  C = k_ref.shape[0]
  nb = C // SUB
  blk = [pl.ds(i * SUB, SUB) for i in range(nb)]
  k = [k_ref[b, :] for b in blk]
  beta = [beta_ref[b] for b in blk]
  G, off = [], 0.0
  for b in blk:
    g = g_ref[b]
    G.append(off + jnp.cumsum(g))
    off = off + jnp.sum(g)
  if packed:
    pos, doc = [pos_ref[b] for b in blk], [doc_ref[b] for b in blk]
  row, col = _iota(SUB)

  def a_block(i, j):
    """A_ij = diag(beta_i) (K_i K_j^T o e^{G_i - G_j}) on strict pairs of one document."""
    mask = (row > col) if i == j else jnp.ones((SUB, SUB), bool)
    if packed:
      mask = mask & (doc[i][:, None] == doc[j][None, :]) & (pos[i] >= 0)[:, None] & (
          pos[j] >= 0)[None, :]
    return beta[i][:, None] * dot(k[i], k[j], mm_dtype, (1, 1)) * jnp.exp(
        jnp.where(mask, G[i][:, None] - G[j][None, :], -jnp.inf))

  A = {(i, j): a_block(i, j) for i in range(nb) for j in range(i)}
  T = {}
  for i in range(nb):
    D = _nilpotent_inverse(a_block(i, i), mm_dtype)
    T[i, i] = D
    for j in range(i - 1, -1, -1):
      acc = dot(A[i, j], T[j, j], f32)
      for m in range(j + 1, i):
        acc = acc + dot(A[i, m], T[m, j], f32)
      T[i, j] = -dot(D, acc, f32)
  zero = jnp.zeros((SUB, SUB), f32)
  for i in range(nb):
    for j in range(nb):
      t_ref[blk[i], blk[j]] = T[i, j] if j <= i else zero
  if not with_wu:
    return
  bw = [k[j].astype(f32) * (beta[j] * jnp.exp(G[j]))[:, None] for j in range(nb)]
  for i in range(nb):
    w = sum(dot(T[i, j], bw[j], mm_dtype) for j in range(i + 1))
    w_ref[blk[i], :] = w.astype(w_ref.dtype)

  def u_block(n, carry):
    """U of one block of V (a loop, not unrolled: at V = 2048 sixteen unrolled blocks made the
    kernel's Triton compilation take a minute)."""
    sl = pl.ds(pl.multiple_of(n * block_v, block_v), block_v)
    bu = [v_ref[blk[j], sl].astype(f32) * beta[j][:, None] for j in range(nb)]
    for i in range(nb):
      u = sum(dot(T[i, j], bu[j], mm_dtype) for j in range(i + 1))
      u_ref[blk[i], sl] = u.astype(u_ref.dtype)
    return carry

  lax.fori_loop(0, v_ref.shape[-1] // block_v, u_block, 0)


def _state_kernel(*refs, C, N, packed, with_init, with_final, mm_dtype):
  k_ref, w_ref, u_ref, g_ref = refs[:4]
  rest = list(refs[4:])
  rho_ref, wm_ref, keep_ref = (rest.pop(0), rest.pop(0), rest.pop(0)) if packed else (None,) * 3
  init_ref = rest.pop(0) if with_init else None
  h_ref, vn_ref = rest[:2]
  final_ref = rest[2] if with_final else None
  K, BV = k_ref.shape[-1], u_ref.shape[-1]

  def body(c, S):
    sl = pl.ds(pl.multiple_of(c * C, C), C)
    _, _, gam, to_end = _chunk_gates(g_ref[sl])
    h_ref[pl.ds(pl.multiple_of(c * K, K), K), :] = S.astype(h_ref.dtype)
    ws = dot(w_ref[sl, :], S, mm_dtype)
    if packed:
      ws = ws * rho_ref[sl][:, None]
    vn = u_ref[sl, :].astype(f32) - ws
    vn_ref[sl, :] = vn.astype(vn_ref.dtype)
    k2 = k_ref[sl, :].astype(f32) * to_end[:, None]
    if packed:
      vn = vn * wm_ref[sl][:, None]
      gam = jnp.where(jnp.max(keep_ref[sl]) > 0, gam, 0.0)
    return gam * S + dot(k2, vn, mm_dtype, (0, 0))

  S0 = init_ref[...] if with_init else jnp.zeros((K, BV), f32)
  S = lax.fori_loop(0, N, body, S0)
  if with_final:
    final_ref[...] = S


def _output_kernel(*refs, packed, mm_dtype, block_v):
  q_ref, k_ref, g_ref, h_ref, vn_ref = refs[:5]
  pos, doc, rho = (refs[5][...], refs[6][...], refs[7][...]) if packed else (None,) * 3
  o_ref = refs[-1]
  q, k = q_ref[...], k_ref[...]
  C = q.shape[0]
  G, eG, _, _ = _chunk_gates(g_ref[...])
  causal, _ = _pairs(C, pos, doc)
  a = dot(q, k, mm_dtype, (1, 1)) * _decay(G, causal)
  qe = q.astype(f32) * (eG if rho is None else eG * rho)[:, None]
  for sl in _vblocks(vn_ref.shape[-1], block_v):
    o_ref[:, sl] = (dot(qe, h_ref[:, sl], mm_dtype)
                    + dot(a, vn_ref[:, sl], mm_dtype)).astype(o_ref.dtype)


def _output_bwd_kernel(*refs, packed, mm_dtype, block_v):
  """The output's backward, before the state cotangents exist: O = rho o (e^G o Q) S + A Vn with
  A = Q K^T o E gives dVl = A^T dO (the state scan's local dVn), the final dQ, and the output's
  parts of dK and of dG (chunk_bwd adds the rest)."""
  q_ref, k_ref, g_ref, h_ref, vn_ref, do_ref = refs[:6]
  pos, doc, rho = (refs[6][...], refs[7][...], refs[8][...]) if packed else (None,) * 3
  dvl_ref, dq_ref, dk_ref, dg_ref = refs[-4:]
  q, k = q_ref[...], k_ref[...]
  C, K = q.shape
  G, eG, _, _ = _chunk_gates(g_ref[...])
  causal, _ = _pairs(C, pos, doc)
  E = _decay(G, causal)
  a = dot(q, k, mm_dtype, (1, 1)) * E
  daqk = jnp.zeros((C, C), f32)      # dO Vn^T
  dqe = jnp.zeros((C, K), f32)       # dO S^T
  for sl in _vblocks(do_ref.shape[-1], block_v):
    do = do_ref[:, sl]
    dvl_ref[:, sl] = dot(a, do, mm_dtype, (0, 0)).astype(dvl_ref.dtype)
    daqk += dot(do, vn_ref[:, sl], mm_dtype, (1, 1))
    dqe += dot(do, h_ref[:, sl], mm_dtype, (1, 1))
  if rho is not None:
    dqe = dqe * rho[:, None]
  dq = dqe * eG[:, None]
  dG = jnp.sum(q.astype(f32) * dq, axis=1)
  dp = daqk * E
  dq_ref[...] = (dq + dot(dp, k, mm_dtype)).astype(dq_ref.dtype)
  dk_ref[...] = dot(dp, q, mm_dtype, (0, 0))
  dx = daqk * a
  dg_ref[...] = dG + jnp.sum(dx, axis=1) - jnp.sum(dx, axis=0)


def _state_bwd_kernel(*refs, C, N, packed, with_state_grads, mm_dtype):
  q_ref, k_ref, w_ref, g_ref, do_ref, dvl_ref = refs[:6]
  rest = list(refs[6:])
  rho_ref, wm_ref, keep_ref = (rest.pop(0), rest.pop(0), rest.pop(0)) if packed else (None,) * 3
  dfinal_ref = rest.pop(0) if with_state_grads else None
  dh_ref, dvn_ref = rest[:2]
  dinit_ref = rest[2] if with_state_grads else None
  K, BV = k_ref.shape[-1], do_ref.shape[-1]

  def body(i, dS):
    c = N - 1 - i
    sl = pl.ds(pl.multiple_of(c * C, C), C)
    _, eG, gam, to_end = _chunk_gates(g_ref[sl])
    dh_ref[pl.ds(pl.multiple_of(c * K, K), K), :] = dS.astype(dh_ref.dtype)
    kd = dot(k_ref[sl, :].astype(f32) * to_end[:, None], dS, mm_dtype)     # K2 dS
    qe = q_ref[sl, :].astype(f32) * eG[:, None]
    if packed:
      kd = kd * wm_ref[sl][:, None]
      qe = qe * rho_ref[sl][:, None]
      gam = jnp.where(jnp.max(keep_ref[sl]) > 0, gam, 0.0)
    dvn = dvl_ref[sl, :].astype(f32) + kd
    dvn_ref[sl, :] = dvn.astype(dvn_ref.dtype)
    if packed:
      dvn = dvn * rho_ref[sl][:, None]
    return (gam * dS + dot(qe, do_ref[sl, :], mm_dtype, (0, 0))
            - dot(w_ref[sl, :], dvn, mm_dtype, (0, 0)))

  dS0 = dfinal_ref[...] if with_state_grads else jnp.zeros((K, BV), f32)
  dS = lax.fori_loop(0, N, body, dS0)
  if with_state_grads:
    dinit_ref[...] = dS


def _inverse_transpose(k, beta, G, T, dt, strict, mm_dtype):
  """(dk, dbeta, dG) of one chunk from dT, the cotangent of T = (I + A)^-1 with
  A = diag(beta) (K K^T o Es): dA = -T^T dT T^T on the strict pairs."""
  da = -dot(dot(T, dt, mm_dtype, (0, 0)), T, mm_dtype, (1, 1))
  es = _decay(G, strict)
  mkk = dot(k, k, mm_dtype, (1, 1)) * es
  da = jnp.where(strict, da, 0.0)
  dm = beta[:, None] * da
  dkk = dm * es
  dx = dm * mkk
  return (dot(dkk, k, mm_dtype) + dot(dkk, k, mm_dtype, (0, 0)), jnp.sum(da * mkk, axis=1),
          jnp.sum(dx, axis=1) - jnp.sum(dx, axis=0))


def _ut_inverse_bwd_kernel(*refs, packed, mm_dtype):
  k_ref, g_ref, beta_ref, t_ref, dt_ref = refs[:5]
  pos, doc = (refs[5][...], refs[6][...]) if packed else (None, None)
  dk_ref, dg_ref, dbeta_ref = refs[-3:]
  k = k_ref[...]
  G, _, _, _ = _chunk_gates(g_ref[...])
  _, strict = _pairs(k.shape[0], pos, doc)
  dk, dbeta, dG = _inverse_transpose(k, beta_ref[...], G, t_ref[...], dt_ref[...], strict,
                                     mm_dtype)
  dk_ref[...] = dk
  dg_ref[...] = _rev_cumsum(dG)
  dbeta_ref[...] = dbeta


def _chunk_bwd_kernel(*refs, packed, mm_dtype, block_v, with_inverse=True):
  """Without with_inverse, dT is an output and the UT inverse's transpose is left to the caller
  (ut_inverse_bwd), which can then sum dT over several runs sharing T first."""
  (k_ref, v_ref, g_ref, beta_ref, t_ref, h_ref, dh_ref, vn_ref, dvn_ref, dk_out_ref,
   dg_out_ref) = refs[:11]
  if packed:
    pos, doc, rho, wm, keep = (r[...] for r in refs[11:16])
  else:
    pos = doc = rho = wm = keep = None
  dt_ref = None if with_inverse else refs[-1]
  dk_ref, dv_ref, dg_ref, dbeta_ref = refs[-4:] if with_inverse else refs[-5:-1]
  k = k_ref[...]
  C, K = k.shape
  kf = k.astype(f32)
  beta = beta_ref[...]
  G, eG, gam, to_end = _chunk_gates(g_ref[...])
  _, strict = _pairs(C, pos, doc)
  vbl = _vblocks(v_ref.shape[-1], block_v)
  dk = dk_out_ref[...]               # the output's parts (output_bwd)
  dG = dg_out_ref[...]

  # State write: K2 = e^{G_C - G} o K, and the chunk decay gam (kept only without a reset).
  dk2 = jnp.zeros((C, K), f32)       # (wm o Vn) dS^T
  dgam = jnp.zeros((), f32)
  for sl in vbl:
    vn, h, dh = vn_ref[:, sl], h_ref[:, sl], dh_ref[:, sl]
    vw = vn if wm is None else vn.astype(f32) * wm[:, None]
    dk2 += dot(vw, dh, mm_dtype, (1, 1))
    dgam += jnp.sum(h.astype(f32) * dh.astype(f32))
  dk += dk2 * to_end[:, None]
  z = jnp.sum(kf * to_end[:, None] * dk2, axis=1)
  if keep is not None:
    dgam = jnp.where(jnp.max(keep) > 0, dgam, 0.0)
  last = jnp.sum(z) + gam * dgam
  dG += jnp.where(lax.broadcasted_iota(jnp.int32, (C,), 0) == C - 1, last, 0.0) - z

  # UT transform: W = T Bw, Bw = diag(beta e^G) K; U = T diag(beta) V; T = (I + A)^-1. The W
  # terms, then the U terms, each a pass over V: fewer live accumulators than one pass for both.
  T = t_ref[...]
  dw = jnp.zeros((C, K), f32)        # dW = -(rho o dVn) S^T
  for sl in vbl:
    dvn = dvn_ref[:, sl]
    dvr = dvn if rho is None else dvn.astype(f32) * rho[:, None]
    dw -= dot(dvr, h_ref[:, sl], mm_dtype, (1, 1))
  bw = beta * eG
  dt = dot(dw, kf * bw[:, None], mm_dtype, (1, 1))             # dT, the W part: dW Bw^T
  dbw = dot(T, dw, mm_dtype, (0, 0))                             # T^T dW
  dk += dbw * bw[:, None]
  s = jnp.sum(kf * dbw, axis=1)
  dbeta = eG * s
  dG += bw * s
  for sl in vbl:
    dvn = dvn_ref[:, sl]
    v = v_ref[:, sl].astype(f32)
    dt += dot(dvn, v * beta[:, None], mm_dtype, (1, 1))          # the U part: dU (diag(beta) V)^T
    dbu = dot(T, dvn, mm_dtype, (0, 0))                          # T^T dU
    dv_ref[:, sl] = (dbu * beta[:, None]).astype(dv_ref.dtype)
    dbeta += jnp.sum(v * dbu, axis=1)
  if with_inverse:
    dk_a, dbeta_a, dG_a = _inverse_transpose(k, beta, G, T, dt, strict, mm_dtype)
    dk += dk_a
    dbeta += dbeta_a
    dG += dG_a
  else:
    dt_ref[...] = dt

  dk_ref[...] = dk.astype(dk_ref.dtype)
  dg_ref[...] = _rev_cumsum(dG)
  dbeta_ref[...] = dbeta


# ------------------------------------------------------------------------------------------------
# Launchers


def _call(kernel, grid, in_specs, out_specs, out_shape, name, cfg, interpret):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps,
                                              num_stages=cfg.num_stages),
      interpret=interpret, name=name)


class _Specs:
  """BlockSpecs of the two grid kinds: chunks (b, h, n), one chunk of C tokens per program, and
  scans (b, h, j), the whole sequence and one block of BV values per program."""

  def __init__(self, B, P, G, H, K, V, C, BV):
    R = H // G
    self.N = P // C
    self.chunk = dict(
        grp=pl.BlockSpec((None, C, None, K), lambda b, h, n: (b, n, h // R, 0)),
        hk=pl.BlockSpec((None, C, None, K), lambda b, h, n: (b, n, h, 0)),
        hv=pl.BlockSpec((None, C, None, V), lambda b, h, n: (b, n, h, 0)),
        hc=pl.BlockSpec((None, C, None, C), lambda b, h, n: (b, n, h, 0)),
        gate=pl.BlockSpec((None, None, C), lambda b, h, n: (b, h, n)),
        tok=pl.BlockSpec((None, C), lambda b, h, n: (b, n)),
        state=pl.BlockSpec((None, None, K, V), lambda b, h, n: (b, h, n, 0)))
    self.scan = dict(
        grp=pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h // R, 0)),
        hk=pl.BlockSpec((None, P, None, K), lambda b, h, j: (b, 0, h, 0)),
        hv=pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j)),
        gate=pl.BlockSpec((None, None, P), lambda b, h, j: (b, h, 0)),
        tok=pl.BlockSpec((None, P), lambda b, h, j: (b, 0)),
        states=pl.BlockSpec((None, None, self.N * K, BV), lambda b, h, j: (b, h, 0, j)),
        state=pl.BlockSpec((None, None, K, BV), lambda b, h, j: (b, h, 0, j)))


CHUNK_BLOCK_V = GDN_CONFIG.block_v   # the block the chunk kernels were timed with at T = 8K


class _Launch(NamedTuple):
  """What every launcher needs: shapes, specs, the matmul dtype, masks and names."""
  B: int
  P: int
  H: int
  K: int
  V: int
  C: int
  BV: int
  mm: jnp.dtype
  sp: _Specs
  masks: Masks | None
  cfg: object
  interpret: bool

  @property
  def packed(self):
    return self.masks is not None

  @property
  def chunk_bv(self):
    """The block of V the chunk-parallel kernels (UT transform, output, their backward) loop
    over: BV is the state scans' (their grid's third axis), which launch_config narrows at long T
    to fill the GPU; a chunk kernel's grid is the chunks, as wide at every T, so narrowing its
    block would only add loop steps and shrink its dots."""
    return min(self.V, CHUNK_BLOCK_V)

  def name(self, kernel):
    return 'gdn' + ('_packed' if self.packed else '') + '_' + kernel

  def call(self, kernel, grid_kind, in_specs, out_specs, out_shape, name, **params):
    grid = (self.B, self.H, self.sp.N if grid_kind == 'chunk' else self.V // self.BV)
    return _call(functools.partial(kernel, packed=self.packed, mm_dtype=self.mm, **params), grid,
                 in_specs, out_specs, out_shape, self.name(name), self.cfg, self.interpret)

  def pos_doc(self, grid_kind='chunk'):
    """(specs, arrays) of the pair masks' inputs."""
    if not self.packed:
      return [], []
    spec = (self.sp.chunk if grid_kind == 'chunk' else self.sp.scan)['tok']
    return [spec] * 2, [self.masks.pos, self.masks.doc]

  def stream(self, grid_kind, names):
    """(specs, arrays) of the per-token stream masks `names` (of rho, wm, keep)."""
    if not self.packed:
      return [], []
    spec = (self.sp.chunk if grid_kind == 'chunk' else self.sp.scan)['tok']
    return [spec] * len(names), [getattr(self.masks, n) for n in names]


def launch(q_BPGK, heads, V, masks, chunk_size, cfg, interpret):
  """_Launch of padded inputs (P = whole chunks, feature axes powers of two >= 16; q or k, the
  heads and the value width)."""
  B, P, G, K = q_BPGK.shape
  H = heads
  BV = min(cfg.block_v, V)
  return _Launch(B, P, H, K, V, chunk_size, BV, q_BPGK.dtype,
                 _Specs(B, P, G, H, K, V, chunk_size, BV), masks, cfg, interpret)


def _sds(shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype)


def ut_transform(L, k_BPGK, v_BPHV, g_BHP, beta_BHP):
  """W_BPHK, U_BPHV (matmul dtype) and T_BPHC (float32) of every chunk; on Mosaic GPU
  (chunkwise_mgpu) where `on_mosaic`."""
  if on_mosaic(L, 'ut_transform'):
    return chunkwise_mgpu.ut_transform(L, k_BPGK, v_BPHV, g_BHP, beta_BHP)
  ch = L.sp.chunk
  specs, arrays = L.pos_doc()
  return L.call(_ut_kernel, 'chunk', [ch['grp'], ch['hv'], ch['gate'], ch['gate']] + specs,
                [ch['hk'], ch['hv'], ch['hc']],
                [_sds((L.B, L.P, L.H, L.K), L.mm), _sds((L.B, L.P, L.H, L.V), L.mm),
                 _sds((L.B, L.P, L.H, L.C), f32)], 'ut_transform', block_v=L.chunk_bv,
                )(k_BPGK, v_BPHV, g_BHP, beta_BHP, *arrays)


def ut_inverse(L, k_BPGK, g_BHP, beta_BHP):
  """T_BPHC (float32) of every chunk alone (log-linear GDN forms W and U itself)."""
  ch = L.sp.chunk
  specs, arrays = L.pos_doc()
  return L.call(_ut_kernel, 'chunk', [ch['grp'], ch['gate'], ch['gate']] + specs,
                ch['hc'], _sds((L.B, L.P, L.H, L.C), f32), 'ut_inverse', block_v=L.chunk_bv,
                with_wu=False)(k_BPGK, g_BHP, beta_BHP, *arrays)


def ut_inverse_bwd(L, k_BPGK, g_BHP, beta_BHP, t_BPHC, dt_BPHC):
  """float32 dk_BPHK (per value head), dg_BHP and dbeta_BHP from dT, the cotangent of
  ut_inverse's T."""
  ch = L.sp.chunk
  specs, arrays = L.pos_doc()
  gate_out = pl.BlockSpec((None, None, L.C), lambda b, h, n: (b, h, n))
  return L.call(_ut_inverse_bwd_kernel, 'chunk',
                [ch['grp'], ch['gate'], ch['gate'], ch['hc'], ch['hc']] + specs,
                [ch['hk'], gate_out, gate_out],
                [_sds((L.B, L.P, L.H, L.K), f32)] + [_sds((L.B, L.H, L.P), f32)] * 2,
                'ut_inverse_bwd')(k_BPGK, g_BHP, beta_BHP, t_BPHC, dt_BPHC, *arrays)


# backend='auto' takes these kernels' Mosaic GPU forms on a Hopper GPU: those timed faster than
# their Triton forms on an H100 at T = 8K (benchmarks/RESULTS.md, "GDN kernels timed per
# backend", "GDN at fla's speed"; the UT transform 1.54 against 2.01 ms since its products split
# in halves). The Mosaic chunk_bwd is slower (3.29 against 2.64 ms): it runs with
# backend='mosaic' only.
AUTO_MOSAIC = ('ut_transform', 'state_scan', 'output', 'output_bwd', 'state_scan_bwd')


def _mosaic_form_serves(L, kernel):
  """Whether a kernel's Mosaic form runs launch L, for those whose range is narrower than
  chunkwise_mgpu.check's (where it raises a ValueError naming the field): the UT transform's
  chunks of 64, output_bwd's V <= 128, chunk_bwd's SMEM. Outside it 'mosaic' takes Triton."""
  narrower = {'ut_transform': chunkwise_mgpu.ut_serves, 'output_bwd': lambda L: L.V <= 128,
              'chunk_bwd': chunkwise_mgpu.chunk_bwd_serves}
  return narrower.get(kernel, lambda L: True)(L)


def on_mosaic(L, kernel='state_scan'):
  """Whether `kernel` (a name of this module's kernels) runs on Mosaic GPU: backend 'mosaic' where
  its Mosaic form serves L, or 'auto' (KernelConfig's default) for the AUTO_MOSAIC kernels outside
  interpret mode on a Hopper GPU where chunkwise_mgpu serves the launch (16-bit inputs, chunks and
  K multiples of 64); Triton otherwise."""
  if L.cfg.backend == 'auto':
    return (kernel in AUTO_MOSAIC and not L.interpret and on_hopper_gpu()
            and chunkwise_mgpu.serves(L) and _mosaic_form_serves(L, kernel))
  return L.cfg.backend == 'mosaic' and _mosaic_form_serves(L, kernel)


def state_scan(L, k_BPGK, w_BPHK, u_BPHV, g_BHP, init_BHKV=None, with_final=False):
  """h_BHMV (the state at every chunk start, chunk n at rows n K ..), Vn_BPHV and, with
  with_final, the float32 final state_BHKV; on Mosaic GPU (chunkwise_mgpu) where `on_mosaic`."""
  if on_mosaic(L, 'state_scan'):
    return chunkwise_mgpu.state_scan(L, k_BPGK, w_BPHK, u_BPHV, g_BHP, init_BHKV, with_final)
  sc = L.sp.scan
  specs, arrays = L.stream('scan', ('rho', 'wm', 'keep'))
  with_init = init_BHKV is not None
  in_specs = [sc['grp'], sc['hk'], sc['hv'], sc['gate']] + specs + (
      [sc['state']] if with_init else [])
  out_specs = [sc['states'], sc['hv']] + ([sc['state']] if with_final else [])
  out_shape = [_sds((L.B, L.H, L.sp.N * L.K, L.V), L.mm), _sds((L.B, L.P, L.H, L.V), L.mm)] + (
      [_sds((L.B, L.H, L.K, L.V), f32)] if with_final else [])
  return L.call(_state_kernel, 'scan', in_specs, out_specs, out_shape, 'state_scan', C=L.C,
                N=L.sp.N, with_init=with_init, with_final=with_final,
                )(k_BPGK, w_BPHK, u_BPHV, g_BHP, *arrays, *([init_BHKV] if with_init else []))


def output(L, q_BPGK, k_BPGK, g_BHP, h_BHMV, vn_BPHV, out_dtype):
  """O_BPHV; on Mosaic GPU (chunkwise_mgpu) where `on_mosaic`."""
  if on_mosaic(L, 'output'):
    return chunkwise_mgpu.output(L, q_BPGK, k_BPGK, g_BHP, h_BHMV, vn_BPHV, out_dtype)
  ch = L.sp.chunk
  specs, arrays = L.pos_doc()
  rspecs, rarrays = L.stream('chunk', ('rho',))
  return L.call(_output_kernel, 'chunk',
                [ch['grp'], ch['grp'], ch['gate'], ch['state'], ch['hv']] + specs + rspecs,
                ch['hv'], _sds((L.B, L.P, L.H, L.V), out_dtype), 'output', block_v=L.chunk_bv,
                )(q_BPGK, k_BPGK, g_BHP, h_BHMV, vn_BPHV, *arrays, *rarrays)


def output_bwd(L, q_BPGK, k_BPGK, g_BHP, h_BHMV, vn_BPHV, do_BPHV, dq_dtype=f32):
  """dvl_BPHV ((Q K^T o E)^T dO per chunk, the matmul dtype), the final dq_BPHK (per value head,
  in dq_dtype), and the output's float32 parts of dk_BPHK and of dG_BHP (in-chunk, before the
  reverse cumsum); on Mosaic GPU (chunkwise_mgpu) where `on_mosaic`."""
  if on_mosaic(L, 'output_bwd'):
    return chunkwise_mgpu.output_bwd(L, q_BPGK, k_BPGK, g_BHP, h_BHMV, vn_BPHV, do_BPHV, dq_dtype)
  ch = L.sp.chunk
  specs, arrays = L.pos_doc()
  rspecs, rarrays = L.stream('chunk', ('rho',))
  return L.call(_output_bwd_kernel, 'chunk',
                [ch['grp'], ch['grp'], ch['gate'], ch['state'], ch['hv'], ch['hv']] + specs
                + rspecs, [ch['hv'], ch['hk'], ch['hk'], ch['gate']],
                [_sds((L.B, L.P, L.H, L.V), L.mm), _sds((L.B, L.P, L.H, L.K), dq_dtype),
                 _sds((L.B, L.P, L.H, L.K), f32), _sds((L.B, L.H, L.P), f32)], 'output_bwd',
                block_v=L.chunk_bv,
                )(q_BPGK, k_BPGK, g_BHP, h_BHMV, vn_BPHV, do_BPHV, *arrays, *rarrays)


def state_scan_bwd(L, q_BPGK, k_BPGK, w_BPHK, g_BHP, do_BPHV, dvl_BPHV, dfinal_BHKV=None):
  """dh_BHMV (the cotangent of the state after every chunk), dVn_BPHV and, with dfinal_BHKV,
  the float32 initial-state cotangent dinit_BHKV; on Mosaic GPU (chunkwise_mgpu) where
  `on_mosaic`."""
  if on_mosaic(L, 'state_scan_bwd'):
    return chunkwise_mgpu.state_scan_bwd(L, q_BPGK, k_BPGK, w_BPHK, g_BHP, do_BPHV, dvl_BPHV,
                                         dfinal_BHKV)
  sc = L.sp.scan
  specs, arrays = L.stream('scan', ('rho', 'wm', 'keep'))
  with_state_grads = dfinal_BHKV is not None
  in_specs = [sc['grp'], sc['grp'], sc['hk'], sc['gate'], sc['hv'], sc['hv']] + specs + (
      [sc['state']] if with_state_grads else [])
  out_specs = [sc['states'], sc['hv']] + ([sc['state']] if with_state_grads else [])
  out_shape = [_sds((L.B, L.H, L.sp.N * L.K, L.V), L.mm), _sds((L.B, L.P, L.H, L.V), L.mm)] + (
      [_sds((L.B, L.H, L.K, L.V), f32)] if with_state_grads else [])
  return L.call(_state_bwd_kernel, 'scan', in_specs, out_specs, out_shape, 'state_scan_bwd',
                C=L.C, N=L.sp.N, with_state_grads=with_state_grads,
                )(q_BPGK, k_BPGK, w_BPHK, g_BHP, do_BPHV, dvl_BPHV, *arrays,
                  *([dfinal_BHKV] if with_state_grads else []))


def chunk_bwd(L, k_BPGK, v_BPHV, g_BHP, beta_BHP, t_BPHC, h_BHMV, dh_BHMV, vn_BPHV, dvn_BPHV,
              dk_out_BPHK, dg_out_BHP, grad_dtype=f32, with_inverse=True):
  """dk_BPHK (per value head) and dv_BPHV in grad_dtype, float32 dg_BHP and dbeta_BHP: the state
  write's and the UT transform's terms added to output_bwd's parts dk_out_BPHK and dg_out_BHP;
  on Mosaic GPU (chunkwise_mgpu) where `on_mosaic`. Without with_inverse (Triton only), the terms
  through T = (I + A)^-1 are left out and its float32 cotangent dT_BPHC is returned as well, for
  ut_inverse_bwd."""
  if with_inverse and on_mosaic(L, 'chunk_bwd'):
    return chunkwise_mgpu.chunk_bwd(L, k_BPGK, v_BPHV, g_BHP, beta_BHP, t_BPHC, h_BHMV, dh_BHMV,
                                    vn_BPHV, dvn_BPHV, dk_out_BPHK, dg_out_BHP, grad_dtype)
  ch = L.sp.chunk
  specs, arrays = L.pos_doc()
  mspecs, marrays = L.stream('chunk', ('rho', 'wm', 'keep'))
  return L.call(
      _chunk_bwd_kernel, 'chunk',
      [ch['grp'], ch['hv'], ch['gate'], ch['gate'], ch['hc'], ch['state'], ch['state'],
       ch['hv'], ch['hv'], ch['hk'], ch['gate']] + specs + mspecs,
      [ch['hk'], ch['hv'], ch['gate'], ch['gate']] + ([] if with_inverse else [ch['hc']]),
      [_sds((L.B, L.P, L.H, L.K), grad_dtype), _sds((L.B, L.P, L.H, L.V), grad_dtype)] + [
          _sds((L.B, L.H, L.P), f32)] * 2 + ([] if with_inverse else [
              _sds((L.B, L.P, L.H, L.C), f32)]),
      'chunk_bwd' if with_inverse else 'chunk_bwd_dt', block_v=L.chunk_bv,
      with_inverse=with_inverse,
  )(k_BPGK, v_BPHV, g_BHP, beta_BHP, t_BPHC, h_BHMV, dh_BHMV, vn_BPHV, dvn_BPHV, dk_out_BPHK,
    dg_out_BHP, *arrays, *marrays)


def gdn_forward(q_BPGK, k_BPGK, v_BPHV, g_BHP, beta_BHP, masks=None, init_BHKV=None, *,
                chunk_size, cfg, with_final=False, with_residuals=False, interpret=False):
  """The forward kernels on padded inputs (P = whole chunks, feature axes powers of two >= 16, q
  scaled): ut_transform, state_scan, output. masks: Masks of packed rows (None: aligned rows).
  init_BHKV: float32 initial state (None: zeros). cfg: KernelConfig (block_v: the state scans'
  block of V; the chunk kernels loop over blocks of `_Launch.chunk_bv`). Returns o_BPHV, with
  with_final the final float32 state_BHKV, and with with_residuals what gdn_backward takes (T, W,
  h, Vn)."""
  L = launch(q_BPGK, *v_BPHV.shape[2:], masks, chunk_size, cfg, interpret)
  w, u, t = ut_transform(L, k_BPGK, v_BPHV, g_BHP, beta_BHP)
  h, vn, *final = state_scan(L, k_BPGK, w, u, g_BHP, init_BHKV, with_final)
  o = output(L, q_BPGK, k_BPGK, g_BHP, h, vn, v_BPHV.dtype)
  outs = (o,) + tuple(final) + ((t, w, h, vn) if with_residuals else ())
  return outs if len(outs) > 1 else o


def gdn_backward(q_BPGK, k_BPGK, v_BPHV, g_BHP, beta_BHP, masks, residuals, do_BPHV,
                 dfinal_BHKV=None, *, chunk_size, cfg, grad_dtype=f32, interpret=False):
  """The backward kernels: output_bwd, state_scan_bwd, chunk_bwd. residuals: (T, W, h, Vn) of
  gdn_forward. dfinal_BHKV: the final state's cotangent (None: zero, and no initial-state
  cotangent is returned). Returns dq_BPHK, dk_BPHK (per value head: sum them over the heads of a
  group) and dv_BPHV in grad_dtype (the inputs' dtype saves a float32 round trip through HBM and
  a cast where no group sum follows), float32 dg_BPH, dbeta_BPH and, with dfinal_BHKV,
  dinit_BHKV."""
  L = launch(q_BPGK, *v_BPHV.shape[2:], masks, chunk_size, cfg, interpret)
  t, w, h, vn = residuals
  dvl, dq, dk_out, dg_out = output_bwd(L, q_BPGK, k_BPGK, g_BHP, h, vn, do_BPHV, grad_dtype)
  dh, dvn, *dinit = state_scan_bwd(L, q_BPGK, k_BPGK, w, g_BHP, do_BPHV, dvl, dfinal_BHKV)
  dk, dv, dg, dbeta = chunk_bwd(L, k_BPGK, v_BPHV, g_BHP, beta_BHP, t, h, dh, vn, dvn, dk_out,
                                dg_out, grad_dtype)
  dg_BPH, dbeta_BPH = (jnp.moveaxis(x, 1, 2) for x in (dg, dbeta))
  return (dq, dk, dv, dg_BPH, dbeta_BPH) + tuple(dinit)
