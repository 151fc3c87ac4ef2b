"""PaTH attention forward as a Pallas kernel (Triton lowering), with a custom_vjp.

Same math, arguments and outputs as `lloglin.ops.path.path_blockwise` (see that module for the
definition of PaTH and PaTH-FoX).

Backend: `pl.pallas_call` lowered through Pallas' Triton backend
(`compiler_params=pltriton.CompilerParams`), which is deprecated in jax 0.11 but ships, lowers
on Hopper and runs in interpret mode on CPU; Mosaic GPU (wgmma/TMA) is not used yet.

Structure (kernels.md 6.3), per group of query heads sharing a key head, chunks of C tokens:
  1. XLA preprocessing, O(T (C + K)) memory: per chunk the UT factor T_c =
     (I + SL(diag(beta) W W^T))^-1, `u = T_c diag(beta) W` (chunk product `I - W^T u`),
     `x = T_c diag(beta) SL(W K^T)` (in-chunk path corrections) and the keys moved to their chunk
     end `k_new = K - x^T W`.
  2. The kernel, one program per (query head, batch, query chunk), heaviest chunks first: in-chunk
     logits `tril(Q K^T - tril(Q W^T) x)`, the query moved to its chunk start
     `q <- Q - tril(Q W^T) u`, then a walk over key chunks from the nearest to the farthest with
     an online softmax (exp2, fp32 statistics and accumulator): logits `q k_new^T`, then the query
     crosses the chunk, `q <- q - (q W^T) u`. Gate and segment masks act on the exponent. Only
     `[C, C]` logits tiles exist; no T x T matrix.
Matmul operands: q.k_new and p.v in the input dtype; the query transform (q W^T, (q W^T) u) in
float16 for 16-bit inputs (as fla does), else in the input dtype; accumulation in float32.

Backward (interim, NOT a Pallas kernel): the custom_vjp's backward is `jax.vjp` of the XLA form
`path_blockwise` (recomputing its forward), so gradients are exact but the backward costs what
the XLA form costs, including its O(T^2 / C * H * (K + V)) memory for the rematerialised loop.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from lloglin.ops.path import _keys_to_end, _prepare, _to_chunks, _ut_transform, path_blockwise

_LOG2E = 1.4426950408889634
_MASKED = -1e30  # finite: a fully masked tile gives exp2(-huge) = 0, never inf - inf


def _dot(a, b, *, trans_b=False):
  """2-D matmul with float32 accumulation (`a @ b` or `a @ b^T`)."""
  dims = (((1,), (1 if trans_b else 0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _fwd_kernel(q_ref, k_ref, v_ref, kn_ref, w_ref, u_ref, x_ref, gq_ref, gk_ref, sq_ref, sk_ref,
                o_ref, *, scale, C, M):
  """One query chunk of one head: diagonal tile, then key chunks i-1, ..., 0."""
  i = M - 1 - pl.program_id(2)
  tdt = w_ref.dtype
  qk_scale = scale * _LOG2E
  rows = pl.ds(i * C, C)
  q_CK = q_ref[...]
  causal_CC = jnp.arange(C)[:, None] >= jnp.arange(C)[None, :]
  mask_CC = causal_CC
  if sq_ref is not None:
    seg_C = sq_ref[...]
    mask_CC = mask_CC & (seg_C[:, None] == sk_ref[rows][None, :])
  if gq_ref is not None:
    gate_C = gq_ref[...]

  def logits(s_CC, cols, mask_CC):
    s_CC = s_CC * qk_scale
    if gq_ref is not None:
      s_CC = s_CC + (gate_C[:, None] - gk_ref[cols][None, :]) * qk_scale
    if mask_CC is not None:
      s_CC = jnp.where(mask_CC, s_CC, _MASKED)
    return s_CC

  # Diagonal tile: in-chunk path products through the UT pieces.
  qw_CC = jnp.where(causal_CC, _dot(q_CK.astype(tdt), w_ref[rows, :], trans_b=True), 0.0)
  z_CC = _dot(q_CK, k_ref[rows, :], trans_b=True) - _dot(qw_CC.astype(tdt), x_ref[rows, :])
  s_CC = logits(z_CC, rows, mask_CC)
  m_C = jnp.max(s_CC, axis=1)
  p_CC = jnp.exp2(s_CC - m_C[:, None])
  l_C = jnp.sum(p_CC, axis=1)
  o_CV = _dot(p_CC.astype(v_ref.dtype), v_ref[rows, :])
  q_CK = q_CK.astype(jnp.float32) - _dot(qw_CC.astype(tdt), u_ref[rows, :])

  def body(step, carry):
    q_CK, m_C, l_C, o_CV = carry
    cols = pl.ds((i - 1 - step) * C, C)
    s_CC = _dot(q_CK.astype(kn_ref.dtype), kn_ref[cols, :], trans_b=True)
    s_CC = logits(s_CC, cols, None if sq_ref is None else seg_C[:, None] == sk_ref[cols][None, :])
    m_new_C = jnp.maximum(m_C, jnp.max(s_CC, axis=1))
    alpha_C = jnp.exp2(m_C - m_new_C)
    p_CC = jnp.exp2(s_CC - m_new_C[:, None])
    l_C = alpha_C * l_C + jnp.sum(p_CC, axis=1)
    o_CV = alpha_C[:, None] * o_CV + _dot(p_CC.astype(v_ref.dtype), v_ref[cols, :])
    # Carry the query across key chunk i-1-step: q <- q (I - W^T u).
    qw_CC = _dot(q_CK.astype(tdt), w_ref[cols, :], trans_b=True)
    q_CK = q_CK - _dot(qw_CC.astype(tdt), u_ref[cols, :])
    return q_CK, m_new_C, l_C, o_CV

  _, _, l_C, o_CV = jax.lax.fori_loop(0, i, body, (q_CK, m_C, l_C, o_CV))
  o_ref[...] = (o_CV / l_C[:, None]).astype(o_ref.dtype)


def _preprocess(k_BTGK, w_BTGK, beta_BTG, C, M, acc, tdt):
  """Per-chunk UT pieces, each `[B, G, M * C, ...]`: k_new (dtype of k), w, u, x (tdt)."""
  B, _, G, K = k_BTGK.shape
  k_BGMCK, w_BGMCK = (_to_chunks(x.astype(acc), C, M).transpose(0, 3, 1, 2, 4)
                      for x in (k_BTGK, w_BTGK))
  beta_BGMC = _to_chunks(beta_BTG.astype(acc), C, M).transpose(0, 3, 1, 2)
  ut_BGMCC = _ut_transform(w_BGMCK, beta_BGMC)
  bw_BGMCK = beta_BGMC[..., None] * w_BGMCK
  u_BGMCK = jnp.einsum("...ij,...jk->...ik", ut_BGMCC, bw_BGMCK, precision="highest")
  wk_BGMCC = jnp.tril(jnp.einsum("...jk,...sk->...js", bw_BGMCK, k_BGMCK, precision="highest"), -1)
  x_BGMCC = jnp.einsum("...ij,...js->...is", ut_BGMCC, wk_BGMCC, precision="highest")
  kn_BGMCK = k_BGMCK - jnp.einsum("...is,...ik->...sk", x_BGMCC, w_BGMCK, precision="highest")
  flat = lambda x: x.reshape(B, G, M * C, x.shape[-1])
  return (flat(kn_BGMCK).astype(k_BTGK.dtype), flat(w_BGMCK).astype(tdt),
          flat(u_BGMCK).astype(tdt), flat(x_BGMCC).astype(tdt), (kn_BGMCK, w_BGMCK, u_BGMCK))


def _transform_dtype(dtype):
  return jnp.float16 if jnp.dtype(dtype).itemsize == 2 else dtype


def _forward(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, *, scale, block_size,
             return_k_cache, interpret):
  (B, T, H, G, K, V), arrays, acc, scale, gate_BTH = _prepare(
      q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, scale)
  q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG = arrays
  C, R = block_size, H // G
  M = -(-T // C)
  Tp = M * C
  pad = lambda x: jnp.pad(x, [(0, 0), (0, Tp - T)] + [(0, 0)] * (x.ndim - 2))
  kn_BGTK, w_BGTK, u_BGTK, x_BGTC, chunked = _preprocess(
      k_BTGK, w_BTGK, beta_BTG, C, M, acc, _transform_dtype(q_BTHK.dtype))
  q_BTHK, k_BTGK, v_BTGV = pad(q_BTHK), pad(k_BTGK), pad(v_BTGV)

  query = lambda *d: pl.BlockSpec((None, C, None, d[0]), lambda h, b, n: (b, M - 1 - n, h, 0))
  keys = lambda d: pl.BlockSpec((None, Tp, None, d), lambda h, b, n: (b, 0, h // R, 0))
  grouped = lambda d: pl.BlockSpec((None, None, Tp, d), lambda h, b, n: (b, h // R, 0, 0))
  args = [q_BTHK, k_BTGK, v_BTGV, kn_BGTK, w_BGTK, u_BGTK, x_BGTC]
  specs = [query(K), keys(K), keys(V), grouped(K), grouped(K), grouped(K), grouped(C)]
  if gate_BTH is None:
    args += [None, None]
    specs += [None, None]
  else:
    gate_BTH = pad(gate_BTH.astype(jnp.float32))
    args += [gate_BTH, gate_BTH]
    specs += [pl.BlockSpec((None, C, None), lambda h, b, n: (b, M - 1 - n, h)),
              pl.BlockSpec((None, Tp, None), lambda h, b, n: (b, 0, h))]
  if segment_ids_BT is None:
    args += [None, None]
    specs += [None, None]
  else:
    seg_BT = pad(segment_ids_BT.astype(jnp.int32))
    args += [seg_BT, seg_BT]
    specs += [pl.BlockSpec((None, C), lambda h, b, n: (b, M - 1 - n)),
              pl.BlockSpec((None, Tp), lambda h, b, n: (b, 0))]
  o_BTHV = pl.pallas_call(
      functools.partial(_fwd_kernel, scale=scale, C=C, M=M),
      grid=(H, B, M),
      in_specs=specs,
      out_specs=query(V),
      out_shape=jax.ShapeDtypeStruct((B, Tp, H, V), v_BTGV.dtype),
      compiler_params=pltriton.CompilerParams(num_warps=4 if max(K, V) <= 64 else 8,
                                              num_stages=2),
      interpret=interpret,
      name="path_attention_fwd",
  )(*args)[:, :T]
  if not return_k_cache:
    return o_BTHV
  kn_BGMCK, w_BGMCK, u_BGMCK = chunked
  # Keys at their chunk end are rounded to k's dtype first, as in path_blockwise.
  kn_BGMCK = kn_BGMCK.astype(k_BTGK.dtype).astype(acc)
  k_end_BTGK = _keys_to_end(*(x.transpose(0, 2, 1, 3, 4) for x in (kn_BGMCK, w_BGMCK, u_BGMCK)))
  k_end_BTGK = k_end_BTGK[:, :T]
  return o_BTHV, k_end_BTGK.astype(k_BTGK.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _path(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, config):
  return _forward(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, **dict(config))


def _path_fwd(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, config):
  out = _path(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, config)
  return out, (q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT)


def _path_bwd(config, residuals, cotangent):
  """Interim: the gradient of the XLA blockwise form (see the module docstring)."""
  *inputs, segment_ids_BT = residuals
  opts = dict(config)
  del opts["interpret"]
  _, vjp = jax.vjp(
      lambda q, k, v, w, beta, g: path_blockwise(
          q, k, v, w, beta, g_BTH=g, segment_ids_BT=segment_ids_BT, **opts), *inputs)
  return (*vjp(cotangent), None)


_path.defvjp(_path_fwd, _path_bwd)


def path_attention(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, *, g_BTH=None, segment_ids_BT=None,
                   scale=None, block_size=64, return_k_cache=False, interpret=False):
  """PaTH attention with the semantics and outputs of `lloglin.ops.path.path_blockwise`.

  Forward: Pallas kernel (Triton lowering); `interpret=True` runs it through Pallas' interpreter
  (CPU tests). Backward: `jax.vjp` of `path_blockwise` (interim, see the module docstring).
  `block_size` (the UT chunk and query/key tile) must be a power of two >= 16 (Triton tiles);
  T need not be a multiple of it (the tail chunk is zero-padded). `segment_ids_BT` (packed
  documents numbered from 1, 0 = padding) is handled inside the kernel.
  """
  if not isinstance(block_size, int) or block_size < 16 or block_size & (block_size - 1):
    raise ValueError(f"block_size: expected a power of two >= 16, got {block_size!r}")
  for name, x in (("q_BTHK", q_BTHK), ("v_BTGV", v_BTGV)):
    d = x.shape[-1] if hasattr(x, "shape") and x.ndim == 4 else None
    if d is not None and (d < 16 or d & (d - 1)):
      raise ValueError(f"{name}: expected a head dim that is a power of two >= 16, got {d}")
  if scale is not None:
    scale = float(scale)
  config = (("scale", scale), ("block_size", block_size), ("return_k_cache", return_k_cache),
            ("interpret", bool(interpret)))
  return _path(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, config)
