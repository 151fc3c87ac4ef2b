"""PaTH attention (arXiv 2505.16381), optionally with the FoX forget gate.

Per key/value group, with Householder-like transitions `H_r = I - beta_r w_r w_r^T` (`|w_r| = 1`,
`beta_r` in (0, 2)):

  z[t, s] = q_t^T (H_t H_{t-1} ... H_{s+1}) k_s                     (s <= t; z[t, t] = q_t.k_t)
  o_t     = sum_{s <= t} softmax_s(scale * (z[t, s] + G_t - G_s)) v_s,   G_t = sum_{r <= t} g_r

`scale` multiplies the gate term too (fla's PaTH convention, kept for parity; fla's plain FoX
kernel does not). `g_BTH` is the log forget gate (log-sigmoid, <= 0) per query head.

Forms (same arguments and layouts):
  path_recurrent   oracle: explicit K x K path products, O(T^2 K^2)
  path_quadratic   oracle: one UT transform over the whole sequence, T x T logits
  path_blockwise   chunked training form: per-chunk UT transform (compact WY), FlashAttention-style
                   loop over key chunks with online softmax, query carried across key chunks
  path_prefill / path_step / path_cache_init   decode on a cache of transformed keys

Letters beyond CONTRIBUTING.md: R = H // G query heads per group (query head h reads group
h // R, as in `jax.nn.dot_product_attention`), C = chunk length, M = number of chunks.

Packed sequences: `segment_ids_BT` (documents numbered from 1, contiguous, 0 = padding). Logits
across documents are masked; padding inputs are zeroed first (beta = 0 makes H = I there), so
NaN in padding never reaches outputs or gradients; outputs at padding positions are 0.

Computation: matmul operands in the input dtype, accumulation and the UT transform in float32
(float64 when any input is float64); outputs in the dtype of `v`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lloglin.ops import checks
from lloglin.ops.attention import HIGHEST, acc_dtype, masked_softmax_read, sanitize_padding


class PathCache(NamedTuple):
  """Decode cache of PaTH attention (a pytree).

  k_BSGK: keys transformed to the current end of the sequence, `(H_{t-1} ... H_{s+1}) k_s` for
    s < length; positions >= length_B are unused (zeros after `path_cache_init`).
  v_BSGV: values.
  gate_BSH: float32 (float64) cumulative log forget gate G_s per query head; None without FoX.
  length_B: int32, number of tokens in the cache (next write position).
  """
  k_BSGK: jax.Array
  v_BSGV: jax.Array
  gate_BSH: jax.Array | None
  length_B: jax.Array


def _einsum(spec, a, b, acc):
  return jnp.einsum(spec, a, b, precision=HIGHEST, preferred_element_type=acc)


def _validate(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT):
  """Returns (B, T, H, G, K, V)."""
  arrays = dict(q_BTHK=q_BTHK, k_BTGK=k_BTGK, v_BTGV=v_BTGV, w_BTGK=w_BTGK, beta_BTG=beta_BTG,
                g_BTH=g_BTH)
  dims, _ = checks.check_shapes(**arrays, segment_ids_BT=segment_ids_BT)
  checks.check_floating(**arrays)
  checks.check_groups(dims, "k_BTGK", "q_BTHK")
  checks.check_segment_ids(segment_ids_BT)
  return tuple(dims[a] for a in "BTHGKV")


def prepare_inputs(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, scale):
  """Validates, zeroes padding, and returns the dims, acc dtype, scale and gate cumsum G_BTH."""
  dims = _validate(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT)
  arrays = sanitize_padding(segment_ids_BT, q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH)
  acc = acc_dtype(*(x for x in arrays if x is not None))
  scale = dims[4]**-0.5 if scale is None else scale
  g_BTH = arrays[-1]
  gate_BTH = None if g_BTH is None else jnp.cumsum(g_BTH.astype(acc), axis=1)
  return dims, arrays[:-1], acc, scale, gate_BTH


def _softmax_read(z_BGRTS, gate_BTH, segment_ids_BT, v_BTGV, scale, acc):
  """Causal (and same-document) softmax of `scale * (z + G_t - G_s)` applied to v, `[B,T,H,V]`."""
  B, G, R, T, _ = z_BGRTS.shape
  if gate_BTH is not None:
    gate_BGRT = gate_BTH.reshape(B, T, G, R).transpose(0, 2, 3, 1)
    z_BGRTS = z_BGRTS + gate_BGRT[..., :, None] - gate_BGRT[..., None, :]
  t_T = jnp.arange(T)
  mask_BTS = (t_T[:, None] >= t_T[None, :])[None]
  if segment_ids_BT is not None:
    mask_BTS = mask_BTS & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
  logits_BGRTS = jnp.where(mask_BTS[:, None, None], scale * z_BGRTS, -jnp.inf)
  p_BGRTS = jax.nn.softmax(logits_BGRTS, axis=-1)
  o_BTGRV = jnp.einsum("bgrts,bsgv->btgrv", p_BGRTS, v_BTGV.astype(acc), precision=HIGHEST)
  return o_BTGRV.reshape(B, T, G * R, -1).astype(v_BTGV.dtype)


def path_recurrent(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, *, g_BTH=None, segment_ids_BT=None,
                   scale=None):
  """Oracle from explicit path products: scans t, carrying P_s = H_t ... H_{s+1} for all s.

  O(T^2 K^2) time and O(T K^2) carry per group; meant for tests (use float64 inputs).
  """
  dims, arrays, acc, scale, gate_BTH = prepare_inputs(
      q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, scale)
  B, T, H, G, K, _ = dims
  q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG = arrays
  R = H // G
  q_TBGRK = q_BTHK.astype(acc).reshape(B, T, G, R, K).swapaxes(0, 1)
  k_BSGK = k_BTGK.astype(acc)
  w_TBGK = w_BTGK.astype(acc).swapaxes(0, 1)
  beta_TBG = beta_BTG.astype(acc).swapaxes(0, 1)
  s_S = jnp.arange(T)

  def step(prod_BSGKK, inputs):
    t, q_BGRK, w_BGK, beta_BG = inputs
    # P_s <- H_t P_s for s < t (P_t stays I): H P = P - beta w (w^T P).
    wP_BSGK = jnp.einsum("bgi,bsgij->bsgj", w_BGK, prod_BSGKK, precision=HIGHEST)
    update_BSGKK = jnp.einsum("bg,bgi,bsgj->bsgij", beta_BG, w_BGK, wP_BSGK, precision=HIGHEST)
    prod_BSGKK = prod_BSGKK - jnp.where((s_S < t)[None, :, None, None, None], update_BSGKK, 0)
    # z[t, s] = q_t^T P_s k_s
    pk_BSGK = jnp.einsum("bsgij,bsgj->bsgi", prod_BSGKK, k_BSGK, precision=HIGHEST)
    z_BGRS = jnp.einsum("bgrk,bsgk->bgrs", q_BGRK, pk_BSGK, precision=HIGHEST)
    return prod_BSGKK, z_BGRS

  eye_BSGKK = jnp.broadcast_to(jnp.eye(K, dtype=acc), (B, T, G, K, K))
  _, z_TBGRS = jax.lax.scan(step, eye_BSGKK, (s_S, q_TBGRK, w_TBGK, beta_TBG))
  z_BGRTS = z_TBGRS.transpose(1, 2, 3, 0, 4)
  return _softmax_read(z_BGRTS, gate_BTH, segment_ids_BT, v_BTGV, scale, acc)


def ut_transform(w_XCK, beta_XC):
  """Compact-WY factor of one chunk (leading axes X batched): `T = (I + SL(diag(beta) W W^T))^-1`.

  Returns `T_XCC` with `H_C ... H_1 = I - W^T T diag(beta) W` (SL = strictly lower triangle).
  """
  C = w_XCK.shape[-2]
  ww_XCC = jnp.einsum("...ik,...jk->...ij", w_XCK, w_XCK, precision=HIGHEST)
  eye_CC = jnp.eye(C, dtype=w_XCK.dtype)
  lower_XCC = eye_CC + jnp.tril(beta_XC[..., :, None] * ww_XCC, -1)
  eye_XCC = jnp.broadcast_to(eye_CC, lower_XCC.shape)
  return jax.scipy.linalg.solve_triangular(lower_XCC, eye_XCC, lower=True, unit_diagonal=True)


def _intra_chunk(q_XCRK, k_XCK, w_XCK, beta_XC):
  """UT pieces of one chunk (leading axes X batched; all arrays in the acc dtype).

  Returns
    z_XRCC: in-chunk logits z[t, s] (lower triangle incl. diagonal; upper triangle is 0),
    q_new_XCRK: queries moved to the chunk start, q_t^T H_t ... H_first,
    k_new_XCK: keys moved to the chunk end, H_last ... H_{s+1} k_s,
    u_XCK: `T diag(beta) W`, so the chunk product is `I - W^T U`.
  """
  ut_XCC = ut_transform(w_XCK, beta_XC)
  u_XCK = jnp.einsum("...ij,...jk->...ik", ut_XCC, beta_XC[..., None] * w_XCK, precision=HIGHEST)
  # x[i, s] = sum_j T[i, j] beta_j w_j.k_s over j > s.
  wk_XCC = jnp.tril(jnp.einsum("...jk,...sk->...js", w_XCK, k_XCK, precision=HIGHEST), -1)
  x_XCC = jnp.einsum("...ij,...js->...is", ut_XCC, beta_XC[..., None] * wk_XCC, precision=HIGHEST)
  k_new_XCK = k_XCK - jnp.einsum("...is,...ik->...sk", x_XCC, w_XCK, precision=HIGHEST)
  qw_XRCC = jnp.tril(jnp.einsum("...trk,...ik->...rti", q_XCRK, w_XCK, precision=HIGHEST))
  q_new_XCRK = q_XCRK - jnp.einsum("...rti,...ik->...trk", qw_XRCC, u_XCK, precision=HIGHEST)
  qk_XRCC = jnp.einsum("...trk,...sk->...rts", q_XCRK, k_XCK, precision=HIGHEST)
  qwx_XRCC = jnp.einsum("...rti,...is->...rts", qw_XRCC, x_XCC, precision=HIGHEST)
  return jnp.tril(qk_XRCC - qwx_XRCC), q_new_XCRK, k_new_XCK, u_XCK


def path_quadratic(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, *, g_BTH=None, segment_ids_BT=None,
                   scale=None):
  """Oracle from one UT transform over the whole sequence (T x T solve and logits)."""
  dims, arrays, acc, scale, gate_BTH = prepare_inputs(
      q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, scale)
  B, T, H, G, K, _ = dims
  q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG = arrays
  R = H // G
  q_BGTRK = q_BTHK.astype(acc).reshape(B, T, G, R, K).swapaxes(1, 2)
  k_BGTK, w_BGTK = (x.astype(acc).swapaxes(1, 2) for x in (k_BTGK, w_BTGK))
  z_BGRTS, _, _, _ = _intra_chunk(q_BGTRK, k_BGTK, w_BGTK, beta_BTG.astype(acc).swapaxes(1, 2))
  return _softmax_read(z_BGRTS, gate_BTH, segment_ids_BT, v_BTGV, scale, acc)


def _to_chunks(x_BT, C, M):
  """`[B, T, ...]` -> `[B, M, C, ...]`, zero-padding T up to M * C."""
  T = x_BT.shape[1]
  pad = [(0, 0)] * x_BT.ndim
  pad[1] = (0, M * C - T)
  x_BT = jnp.pad(x_BT, pad)
  return x_BT.reshape(x_BT.shape[:1] + (M, C) + x_BT.shape[2:])


def path_blockwise(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, *, g_BTH=None, segment_ids_BT=None,
                   scale=None, block_size=64, return_k_cache=False):
  """Chunked PaTH attention (the XLA training form); any T (the last chunk is zero-padded).

  Each chunk of `block_size` tokens gets its UT transform; the diagonal block uses in-chunk
  logits, then a loop over chunk distance d = 1..M-1 attends every query chunk m to key chunk
  m - d (keys moved to their chunk end) with an online softmax, and moves the query across that
  chunk (`q <- q - (q W^T) U`). Per step only a `[T, C]` block of logits per head exists.
  Differentiable by plain autodiff; each loop step is rematerialised, so the backward pass keeps
  the carried query and accumulators of every step, O(T^2 / C * H * (K + V)) memory.

  With `return_k_cache=True` also returns `k_BTGK` transformed to the end of the sequence,
  `(H_{T-1} ... H_{s+1}) k_s`, in the dtype of `k` (the decode cache; see `path_prefill`).
  """
  if not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"block_size: expected a positive int, got {block_size!r}")
  dims, arrays, acc, scale, gate_BTH = prepare_inputs(
      q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, scale)
  B, T, H, G, K, V = dims
  q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG = arrays
  R, C = H // G, block_size
  M = -(-T // C)
  cdt = q_BTHK.dtype  # matmul operand dtype for the logits
  q_BMCGRK = _to_chunks(q_BTHK.reshape(B, T, G, R, K), C, M)
  k_BMCGK, w_BMCGK, v_BMCGV = (_to_chunks(x, C, M) for x in (k_BTGK, w_BTGK, v_BTGV))
  beta_BMCG = _to_chunks(beta_BTG, C, M)
  # Chunk-local layout [B, M, G, C, ...] for the UT pieces.
  z_BMGRCC, q_new_BMGCRK, k_new_BMGCK, u_BMGCK = _intra_chunk(
      q_BMCGRK.astype(acc).transpose(0, 1, 3, 2, 4, 5),
      k_BMCGK.astype(acc).transpose(0, 1, 3, 2, 4),
      w_BMCGK.astype(acc).transpose(0, 1, 3, 2, 4),
      beta_BMCG.astype(acc).transpose(0, 1, 3, 2))
  w_BMGCK = w_BMCGK.astype(acc).transpose(0, 1, 3, 2, 4)
  k_new_BMGCK = k_new_BMGCK.astype(k_BTGK.dtype)
  v_BMGCV = v_BMCGV.transpose(0, 1, 3, 2, 4)

  if gate_BTH is None:
    gate_BMGRC = jnp.zeros((B, M, G, R, C), acc)
  else:
    gate_BMGRC = _to_chunks(gate_BTH.reshape(B, T, G, R), C, M).transpose(0, 1, 3, 4, 2)
  if segment_ids_BT is None:
    seg_BMC = jnp.ones((B, M, C), jnp.int32)
  else:
    seg_BMC = _to_chunks(segment_ids_BT, C, M)

  # Diagonal blocks: causal inside the chunk (padded tail keys sit after every real query).
  c_C = jnp.arange(C)
  mask_BM11CC = ((c_C[:, None] >= c_C[None, :])
                 & (seg_BMC[..., :, None] == seg_BMC[..., None, :]))[:, :, None, None]
  logits_BMGRCC = scale * (z_BMGRCC + gate_BMGRC[..., :, None] - gate_BMGRC[..., None, :])
  logits_BMGRCC = jnp.where(mask_BM11CC, logits_BMGRCC, -jnp.inf)
  m_BMGRC = jnp.max(logits_BMGRCC, axis=-1)
  p_BMGRCC = jnp.exp(logits_BMGRCC - m_BMGRC[..., None])
  l_BMGRC = jnp.sum(p_BMGRCC, axis=-1)
  o_BMGRCV = _einsum("bmgrts,bmgsv->bmgrtv", p_BMGRCC.astype(v_BTGV.dtype), v_BMGCV, acc)

  m_M = jnp.arange(M)
  # Key-side arrays with M zero chunks in front: slicing chunks [M - d, 2M - d) puts key chunk
  # m - d at index m (zeros for m < d).
  keys_side = tuple(jnp.concatenate([jnp.zeros_like(x), x], axis=1)
                    for x in (k_new_BMGCK, v_BMGCV, w_BMGCK, u_BMGCK, gate_BMGRC, seg_BMC))

  @jax.checkpoint  # under autodiff, keep only the carry per step and recompute the rest
  def step(carry, d):
    q_BMGCRK, m_BMGRC, l_BMGRC, o_BMGRCV = carry
    k_BMGCK, v_BMGCV, w_BMGCK, u_BMGCK, gk_BMGRC, segk_BMC = (
        jax.lax.dynamic_slice_in_dim(x, M - d, M, axis=1) for x in keys_side)
    z_BMGRCC = _einsum("bmgtrk,bmgsk->bmgrts", q_BMGCRK.astype(cdt), k_BMGCK, acc)
    logits_BMGRCC = scale * (z_BMGRCC + gate_BMGRC[..., :, None] - gk_BMGRC[..., None, :])
    mask_BMCC = (m_M >= d)[None, :, None, None] & (seg_BMC[..., :, None] == segk_BMC[..., None, :])
    logits_BMGRCC = jnp.where(mask_BMCC[:, :, None, None], logits_BMGRCC, -jnp.inf)
    m_new_BMGRC = jnp.maximum(m_BMGRC, jnp.max(logits_BMGRCC, axis=-1))
    alpha_BMGRC = jnp.exp(m_BMGRC - m_new_BMGRC)
    p_BMGRCC = jnp.exp(logits_BMGRCC - m_new_BMGRC[..., None])
    l_BMGRC = alpha_BMGRC * l_BMGRC + jnp.sum(p_BMGRCC, axis=-1)
    o_BMGRCV = alpha_BMGRC[..., None] * o_BMGRCV + _einsum(
        "bmgrts,bmgsv->bmgrtv", p_BMGRCC.astype(v_BMGCV.dtype), v_BMGCV, acc)
    # Move the query across key chunk m - d: q^T <- q^T (I - W^T U).
    qw_BMGCRC = jnp.einsum("bmgtrk,bmgik->bmgtri", q_BMGCRK, w_BMGCK, precision=HIGHEST)
    q_BMGCRK = q_BMGCRK - jnp.einsum(
        "bmgtri,bmgik->bmgtrk", qw_BMGCRC, u_BMGCK, precision=HIGHEST)
    return (q_BMGCRK, m_new_BMGRC, l_BMGRC, o_BMGRCV), None

  carry = (q_new_BMGCRK, m_BMGRC, l_BMGRC, o_BMGRCV)
  (_, _, l_BMGRC, o_BMGRCV), _ = jax.lax.scan(step, carry, jnp.arange(1, M))
  o_BMGRCV = o_BMGRCV / l_BMGRC[..., None]
  o_BTHV = o_BMGRCV.transpose(0, 1, 4, 2, 3, 5).reshape(B, M * C, H, V)[:, :T]
  o_BTHV = o_BTHV.astype(v_BTGV.dtype)
  if not return_k_cache:
    return o_BTHV
  k_end_BTGK = keys_to_end(k_new_BMGCK.astype(acc), w_BMGCK, u_BMGCK)[:, :T]
  return o_BTHV, k_end_BTGK.astype(k_BTGK.dtype)


def keys_to_end(k_new_BMGCK, w_BMGCK, u_BMGCK):
  """Keys at their chunk end -> keys at the sequence end, `[B, M * C, G, K]`.

  Reverse scan over chunks carrying the dense suffix product S_m = P_{M-1} ... P_{m+1}, with the
  chunk product P_m = I - W_m^T U_m.
  """
  B, M, G, C, K = k_new_BMGCK.shape

  def step(suffix_BGKK, inputs):
    k_BGCK, w_BGCK, u_BGCK = inputs
    k_end_BGCK = jnp.einsum("bgij,bgcj->bgci", suffix_BGKK, k_BGCK, precision=HIGHEST)
    sw_BGKC = jnp.einsum("bgij,bgcj->bgic", suffix_BGKK, w_BGCK, precision=HIGHEST)
    suffix_BGKK = suffix_BGKK - jnp.einsum("bgic,bgck->bgik", sw_BGKC, u_BGCK, precision=HIGHEST)
    return suffix_BGKK, k_end_BGCK

  eye_BGKK = jnp.broadcast_to(jnp.eye(K, dtype=k_new_BMGCK.dtype), (B, G, K, K))
  xs = tuple(x.swapaxes(0, 1) for x in (k_new_BMGCK, w_BMGCK, u_BMGCK))
  _, k_end_MBGCK = jax.lax.scan(step, eye_BGKK, xs, reverse=True)
  return k_end_MBGCK.transpose(1, 0, 3, 2, 4).reshape(B, M * C, G, K)


def path_cache_init(batch_size, cache_size, num_groups, head_dim, value_dim, *, num_heads=None,
                    dtype=jnp.float32, gate_dtype=jnp.float32):
  """An empty `PathCache`; `num_heads` (query heads) adds the FoX gate cumsums."""
  gate_BSH = None if num_heads is None else jnp.zeros((batch_size, cache_size, num_heads),
                                                      gate_dtype)
  return PathCache(
      k_BSGK=jnp.zeros((batch_size, cache_size, num_groups, head_dim), dtype),
      v_BSGV=jnp.zeros((batch_size, cache_size, num_groups, value_dim), dtype),
      gate_BSH=gate_BSH,
      length_B=jnp.zeros((batch_size,), jnp.int32))


def path_prefill(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, *, g_BTH=None, length_B=None,
                 cache_size=None, scale=None, block_size=64, sequence_fn=path_blockwise):
  """Blockwise forward over a prompt plus the decode cache that continues it.

  `length_B` (optional) right-pads: row b holds `length_B[b]` prompt tokens, the rest is padding
  (zeroed, output 0) and decoding continues at position `length_B[b]`. `cache_size` (>= T,
  default T) is the capacity S of the returned cache. `sequence_fn` computes the forward and the
  keys at the sequence end (`path_blockwise`, or a kernel with its signature and
  `return_k_cache`). Returns `(o_BTHV, PathCache)`; the cache dtype is that of k and v, the gate
  cumsums are float32 (float64 for float64 inputs).
  """
  dims, _ = checks.check_shapes(q_BTHK=q_BTHK, length_B=length_B)
  B, T = dims["B"], dims["T"]
  cache_size = T if cache_size is None else cache_size
  if cache_size < T:
    raise ValueError(f"cache_size: expected at least the prompt length T={T}, got {cache_size}")
  segment_ids_BT = None
  if length_B is None:
    length_B = jnp.full((B,), T, jnp.int32)
  else:
    length_B = length_B.astype(jnp.int32)
    segment_ids_BT = (jnp.arange(T)[None, :] < length_B[:, None]).astype(jnp.int32)
  o_BTHV, k_end_BTGK = sequence_fn(
      q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH=g_BTH, segment_ids_BT=segment_ids_BT,
      scale=scale, block_size=block_size, return_k_cache=True)
  v_BTGV, g_BTH = sanitize_padding(segment_ids_BT, v_BTGV, g_BTH)
  pad = ((0, 0), (0, cache_size - T), (0, 0), (0, 0))
  gate_BSH = None
  if g_BTH is not None:
    acc = acc_dtype(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH)
    gate_BSH = jnp.pad(jnp.cumsum(g_BTH.astype(acc), axis=1), pad[:3])
  cache = PathCache(jnp.pad(k_end_BTGK, pad), jnp.pad(v_BTGV, pad), gate_BSH, length_B)
  return o_BTHV, cache


def path_step(q_BHK, k_BGK, v_BGV, w_BGK, beta_BG, cache, *, g_BH=None, scale=None):
  """One decode step at position `t = cache.length_B`; returns `(o_BHV, new cache)`.

  Applies H_t to every cached key (`k_j <- k_j - beta_t (k_j.w_t) w_t`, a rank-1 update),
  writes k_t, v_t (and G_t = G_{t-1} + g_t) at position t, then attends over positions <= t.
  The caller keeps `length_B < S`; a write at `length_B >= S` is dropped.
  """
  if (g_BH is None) != (cache.gate_BSH is None):
    raise ValueError(
        "g_BH and cache.gate_BSH must be given together (FoX gate), got "
        f"g_BH={'None' if g_BH is None else 'an array'} and "
        f"cache.gate_BSH={'None' if cache.gate_BSH is None else 'an array'}")
  arrays = dict(q_BHK=q_BHK, k_BGK=k_BGK, v_BGV=v_BGV, w_BGK=w_BGK, beta_BG=beta_BG, g_BH=g_BH)
  # The cache binds the letters first, so a mismatch is reported on the step's arguments.
  dims, _ = checks.check_shapes(
      **{"cache.k_BSGK": cache.k_BSGK, "cache.v_BSGV": cache.v_BSGV,
         "cache.gate_BSH": cache.gate_BSH, "cache.length_B": cache.length_B}, **arrays)
  checks.check_floating(**arrays)
  checks.check_groups(dims, "k_BGK", "q_BHK")
  B, H, G, K, V, S = (dims[a] for a in "BHGKVS")
  R = H // G
  scale = K**-0.5 if scale is None else scale
  acc = acc_dtype(q_BHK, k_BGK, v_BGV, w_BGK, beta_BG, cache.k_BSGK)
  t_B = cache.length_B
  w_BGK = w_BGK.astype(acc)
  k_BSGK = cache.k_BSGK.astype(acc)
  kw_BSG = jnp.einsum("bsgk,bgk->bsg", k_BSGK, w_BGK, precision=HIGHEST)
  k_BSGK = k_BSGK - (beta_BG.astype(acc)[:, None] * kw_BSG)[..., None] * w_BGK[:, None]
  at_t_BS = jnp.arange(S)[None, :] == t_B[:, None]
  k_BSGK = jnp.where(at_t_BS[..., None, None], k_BGK.astype(acc)[:, None], k_BSGK)
  k_BSGK = k_BSGK.astype(cache.k_BSGK.dtype)
  v_BSGV = jnp.where(at_t_BS[..., None, None], v_BGV[:, None], cache.v_BSGV).astype(
      cache.v_BSGV.dtype)
  logits_BGRS = _einsum("bgrk,bsgk->bgrs", q_BHK.reshape(B, G, R, K), k_BSGK, acc)
  gate_BSH = cache.gate_BSH
  if g_BH is not None:
    prev_BH = jnp.take_along_axis(gate_BSH, jnp.maximum(t_B - 1, 0)[:, None, None], axis=1)[:, 0]
    gate_t_BH = jnp.where((t_B > 0)[:, None], prev_BH, 0) + g_BH.astype(gate_BSH.dtype)
    gate_BSH = jnp.where(at_t_BS[..., None], gate_t_BH[:, None], gate_BSH)
    gate_diff_BGRS = (gate_t_BH[:, None] - gate_BSH).reshape(B, S, G, R).transpose(0, 2, 3, 1)
    logits_BGRS = logits_BGRS + gate_diff_BGRS.astype(acc)
  valid_B11S = (jnp.arange(S)[None, :] <= t_B[:, None])[:, None, None]
  o_BGRV = masked_softmax_read(scale * logits_BGRS, valid_B11S, v_BSGV)
  o_BHV = o_BGRV.reshape(B, H, V).astype(v_BGV.dtype)
  return o_BHV, PathCache(k_BSGK, v_BSGV, gate_BSH, t_B + 1)
