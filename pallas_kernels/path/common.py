"""What the two PaTH kernel variants share: `kernel.py` (every level's query / key copies at once,
the default) and `linear_memory.py` (one level's copies at a time).

Launch parameters and the static sizes of one attention (`Call`), the XLA pieces of each chunk
and the segment tree of chunk products, the tile arithmetic of the kernels (online softmax and
the FlashAttention-2 gradients of one off-diagonal tile) and the front end of the public
functions (argument checks, padding to whole chunks, the decode cache's keys).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from lloglin.ops.path import keys_to_end, prepare_inputs, ut_transform

LOG2E = 1.4426950408889634
MASKED = -1e30  # finite: a fully masked tile gives exp2(-huge) = 0, never inf - inf


class KernelConfig(NamedTuple):
  """Triton launch parameters of the PaTH attention kernels, fwd / dq / dkv (the tile is
  `block_size`). The default was the fastest (block_size, warps, stages) of a sweep at T = 8192
  for the default kernels (`bench_mixers.py --kernel_configs`; benchmarks/RESULTS.md#lab-log,
  "PaTH launch sweep"); the linear-memory variant runs them too (not swept). backend: 'triton',
  or 'mosaic' for the three kernels on Mosaic GPU (kernel_mgpu.py; `path_attention` only; timed
  at 0.92x the Triton kernels' fwd+bwd on an H100 at T = 8K, so 'triton' stays the default)."""
  num_warps: int = 4
  num_stages: int = 2
  backend: str = 'triton'


class Call(NamedTuple):
  """Static sizes and options of one attention (Tp: T padded to whole chunks), shared by its
  kernel calls; hashable, so a custom_vjp takes it as one non-differentiable argument."""
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

  def specs(self, *, levels, first, gate, seg, key_major, backward=False):
    """BlockSpecs of the attention kernels' shared inputs on grid (H, B, M), and the grid's
    chunk map. In order: the level index and one level's copies [Tp, K] per head
    (`levels=None`) or every level's copies [L, Tp, K] (`levels=L`); z (`first`: the diagonal
    tiles), v, gate, segment ids and (`backward`) do, lse, delta. Key-major grids (dkv) give
    each program its chunk of v and all rows of do, lse, delta; query-major ones the reverse."""
    R, M, C, Tp, K, V = self.H // self.G, self.M, self.C, self.Tp, self.K, self.V
    chunk = (lambda n: n) if key_major else (lambda n: M - 1 - n)
    if levels is None:
      lead, block = [pl.BlockSpec((1,), lambda h, b, n: (0,))], (None, None, Tp, K)
    else:
      lead, block = [], (None, None, levels, Tp, K)
    zeros = (0,) * (len(block) - 2)
    copies = [pl.BlockSpec(block, lambda h, b, n, head=head: (b, head(h)) + zeros)
              for head in (lambda h: h, lambda h: h // R)]  # q per query head, k per group
    all_rows = pl.BlockSpec((None, None, Tp), lambda h, b, n: (b, h, 0))
    specs = lead + copies + [
        pl.BlockSpec((None, None, C, C), lambda h, b, n: (b, h, chunk(n), 0)) if first else None,
        pl.BlockSpec((None, C, None, V), lambda h, b, n: (b, chunk(n), h // R, 0))
        if key_major else pl.BlockSpec((None, Tp, None, V), lambda h, b, n: (b, 0, h // R, 0)),
        all_rows if gate else None,
        pl.BlockSpec((None, Tp), lambda h, b, n: (b, 0)) if seg else None]
    if backward and key_major:
      specs += [pl.BlockSpec((None, Tp, None, V), lambda h, b, n: (b, 0, h, 0)), all_rows,
                all_rows]
    elif backward:
      specs += [self.values_spec(chunk), self.rows_spec(chunk), self.rows_spec(chunk)]
    return specs, chunk

  def rows_spec(self, chunk):
    """[B, H, Tp] arrays: this program's chunk of rows."""
    return pl.BlockSpec((None, None, self.C), lambda h, b, n: (b, h, chunk(n)))

  def values_spec(self, chunk):
    """[B, Tp, H, V] arrays: this program's chunk of rows."""
    return pl.BlockSpec((None, self.C, None, self.V), lambda h, b, n: (b, chunk(n), h, 0))

  def __call__(self, kernel, name, in_specs, out_specs, out_shape, *args, **static):
    """`kernel` (given scale, qk_scale: scale in log2 units, C, M and `static`) on grid
    (H, B, M) with the launch config."""
    return pl.pallas_call(
        functools.partial(kernel, scale=self.scale, qk_scale=self.scale * LOG2E, C=self.C,
                          M=self.M, **static),
        grid=(self.H, self.B, self.M), in_specs=in_specs, out_specs=out_specs,
        out_shape=out_shape, compiler_params=pltriton.CompilerParams(
            num_warps=self.config.num_warps, num_stages=self.config.num_stages),
        interpret=self.interpret, name=name)(*args)


def dot(a, b, *, trans_a=False, trans_b=False, precision=None):
  """2-D matmul with float32 accumulation; `trans_*` contracts over the other axis."""
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return jax.lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def num_levels(M):
  return max(1, (M - 1).bit_length())


def copy_precision(dtype):
  """HIGHEST for float32 inputs; default (TF32) for 16-bit ones, whose copies are rounded anyway."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype).itemsize >= 4 else None


# ---------------------------------------------------------------- preprocessing (XLA) ----------

class Chunks(NamedTuple):
  """UT pieces of every chunk (T = M * C), in the accumulation dtype except z (float32)."""
  qhat_BGRMCK: jax.Array  # queries at their chunk start
  kn_BGMCK: jax.Array     # keys at their chunk end
  w_BGMCK: jax.Array
  u_BGMCK: jax.Array      # T diag(beta) W: the chunk product is P = I - W^T u
  z_BHTC: jax.Array       # in-chunk logits tril(Q K^T - tril(Q W^T) x)


def chunk_pieces(q_BTHK, k_BTGK, w_BTGK, beta_BTG, C, M, acc):
  """`Chunks` of padded inputs (as lloglin.ops.path._intra_chunk), differentiable by autodiff."""
  B, T, H, K = q_BTHK.shape
  G = k_BTGK.shape[2]
  R = H // G
  hi = functools.partial(jnp.einsum, precision="highest")
  chunk = lambda x: x.astype(acc).reshape((B, M, C) + x.shape[2:])  # noqa: E731
  q_BGRMCK = chunk(q_BTHK).reshape(B, M, C, G, R, K).transpose(0, 3, 4, 1, 2, 5)
  k_BGMCK, w_BGMCK = (chunk(x).transpose(0, 3, 1, 2, 4) for x in (k_BTGK, w_BTGK))
  beta_BGMC = chunk(beta_BTG).transpose(0, 3, 1, 2)

  ut_BGMCC = ut_transform(w_BGMCK, beta_BGMC)
  bw_BGMCK = beta_BGMC[..., None] * w_BGMCK
  u_BGMCK = hi("bgmij,bgmjk->bgmik", ut_BGMCC, bw_BGMCK)
  x_BGMCC = hi("bgmij,bgmjs->bgmis", ut_BGMCC,
               jnp.tril(hi("bgmjk,bgmsk->bgmjs", bw_BGMCK, k_BGMCK), -1))
  kn_BGMCK = k_BGMCK - hi("bgmis,bgmik->bgmsk", x_BGMCC, w_BGMCK)
  qw_BGRMCC = jnp.tril(hi("bgrmtk,bgmik->bgrmti", q_BGRMCK, w_BGMCK))
  z_BGRMCC = jnp.tril(hi("bgrmtk,bgmsk->bgrmts", q_BGRMCK, k_BGMCK)
                      - hi("bgrmti,bgmis->bgrmts", qw_BGRMCC, x_BGMCC))
  qhat_BGRMCK = q_BGRMCK - hi("bgrmti,bgmik->bgrmtk", qw_BGRMCC, u_BGMCK)
  return Chunks(qhat_BGRMCK, kn_BGMCK, w_BGMCK, u_BGMCK,
                 z_BGRMCC.reshape(B, H, T, C).astype(jnp.float32))


def segment_tree(w_BGMCK, u_BGMCK, L, precision):
  """Aligned block products of levels s < L, blk[s][a] = P_{(a+1)2^s - 1} ... P_{a 2^s}, the M
  chunks padded with identities to 2^L: a list of [B, G, 2^(L-s), K, K]."""
  B, G, M, _, K = w_BGMCK.shape
  eye_KK = jnp.eye(K, dtype=w_BGMCK.dtype)
  p_BGMKK = eye_KK - jnp.einsum("bgmck,bgmcl->bgmkl", w_BGMCK, u_BGMCK, precision="highest")
  blk = [jnp.concatenate([p_BGMKK, jnp.broadcast_to(eye_KK, (B, G, 2**L - M, K, K))], axis=2)]
  for _ in range(L - 1):
    blk.append(jnp.einsum("bgakl,bgalm->bgakm", blk[-1][:, :, 1::2], blk[-1][:, :, 0::2],
                          precision=precision))
  return blk


# ---------------------------------------------------------------- tiles (inside kernels) -------
# A token side of a tile is `tok` = (gate cumsum G_C, segment ids seg_C), each None when absent;
# `stats` = (lse_C, delta_C, do_CV) of the tile's query rows.

def token_side(g_ref, seg_ref, idx):
  return _opt(g_ref, idx), _opt(seg_ref, idx)


def _opt(ref, idx):
  return None if ref is None else ref[idx]


def _tile(s_CC, q_tok, k_tok, qk_scale, mask_CC=None):
  """Logits of one tile in log2 units: `qk_scale (z + G_t - G_s)`, masked on the exponent."""
  (gq_C, sq_C), (gk_C, sk_C) = q_tok, k_tok
  s_CC = s_CC * qk_scale
  if gq_C is not None:
    s_CC = s_CC + (gq_C[:, None] - gk_C[None, :]) * qk_scale
  if sq_C is not None:
    same_CC = sq_C[:, None] == sk_C[None, :]
    mask_CC = same_CC if mask_CC is None else mask_CC & same_CC
  return s_CC if mask_CC is None else jnp.where(mask_CC, s_CC, MASKED)


def diagonal_tile(z_CC, tok, qk_scale):
  """Log2-unit logits of a chunk's own (causal) tile from its in-chunk logits z."""
  C = z_CC.shape[0]
  causal_CC = jnp.arange(C)[:, None] >= jnp.arange(C)[None, :]
  return _tile(z_CC, tok, tok, qk_scale, causal_CC)


def keys_below(i, lv):
  """(mid, n): at level lv, query chunk i meets the key chunks mid - 1, ..., mid - n (n = 0
  unless bit lv of i is set)."""
  return (i >> lv) << lv, ((i >> lv) & 1) << lv


def queries_above(j, lv, M):
  """(start, n): at level lv, key chunk j meets the query chunks start, ..., start + n - 1 (n = 0
  unless bit lv of j is clear)."""
  start = ((j >> lv) + 1) << lv
  return start, (1 - ((j >> lv) & 1)) * jnp.clip(M - start, 0, 1 << lv)


def softmax_start(s_CC, v_CV):
  """Online-softmax state (m, l, acc) of one tile's log2 logits."""
  m_C = jnp.max(s_CC, axis=1)
  p_CC = jnp.exp2(s_CC - m_C[:, None])
  return m_C, jnp.sum(p_CC, axis=1), dot(p_CC.astype(v_CV.dtype), v_CV)


def softmax_step(carry, q_CK, k_CK, v_CV, q_tok, k_tok, qk_scale):
  """(m, l, acc) updated by the tile q k^T."""
  m_C, l_C, o_CV = carry
  s_CC = _tile(dot(q_CK, k_CK, trans_b=True), q_tok, k_tok, qk_scale)
  m_new_C = jnp.maximum(m_C, jnp.max(s_CC, axis=1))
  alpha_C = jnp.exp2(m_C - m_new_C)
  p_CC = jnp.exp2(s_CC - m_new_C[:, None])
  l_C = alpha_C * l_C + jnp.sum(p_CC, axis=1)
  o_CV = alpha_C[:, None] * o_CV + dot(p_CC.astype(v_CV.dtype), v_CV)
  return m_new_C, l_C, o_CV


def probs(s_CC, v_CV, stats):
  """(P, dS) of a tile: P = exp2(s - lse), dS = P (dO v^T - delta), the gradient w.r.t. the
  natural-unit logits."""
  lse_C, delta_C, do_CV = stats
  p_CC = jnp.exp2(s_CC - lse_C[:, None])
  return p_CC, p_CC * (dot(do_CV, v_CV, trans_b=True) - delta_C[:, None])


def diagonal_dkv(z_CC, tok, qk_scale, v_CV, stats):
  """(dv, gate column sums) of a key chunk's own (causal) tile."""
  p_CC, ds_CC = probs(diagonal_tile(z_CC, tok, qk_scale), v_CV, stats)
  do_CV = stats[2]
  return dot(p_CC.astype(do_CV.dtype), do_CV, trans_a=True), jnp.sum(ds_CC, axis=0)


def dq_step(carry, q_CK, k_CK, v_CV, q_tok, k_tok, qk_scale, stats):
  """(dq, gate row sums) plus those of the tile q k^T."""
  dq_CK, dg_C = carry
  _, ds_CC = probs(_tile(dot(q_CK, k_CK, trans_b=True), q_tok, k_tok, qk_scale), v_CV, stats)
  return dq_CK + dot(ds_CC.astype(k_CK.dtype), k_CK), dg_C + jnp.sum(ds_CC, axis=1)


def dkv_step(carry, q_CK, k_CK, v_CV, q_tok, k_tok, qk_scale, stats):
  """(dk, dv, gate column sums) plus those of the tile q k^T."""
  dk_CK, dv_CV, dg_C = carry
  p_CC, ds_CC = probs(_tile(dot(q_CK, k_CK, trans_b=True), q_tok, k_tok, qk_scale), v_CV,
                       stats)
  do_CV = stats[2]
  dv_CV = dv_CV + dot(p_CC.astype(do_CV.dtype), do_CV, trans_a=True)
  dk_CK = dk_CK + dot(ds_CC.astype(q_CK.dtype), q_CK, trans_a=True)
  return dk_CK, dv_CV, dg_C + jnp.sum(ds_CC, axis=0)


def output_delta(o_BTHV, do_BTHV):
  """delta_BHT = rowsum(o * do), the softmax backward's correction, in float32."""
  return jnp.einsum("bthv,bthv->bht", o_BTHV.astype(jnp.float32), do_BTHV.astype(jnp.float32))


def sum_groups(x_BTHV, G):
  """Sums the query heads of each key / value group: [B, T, H, V] -> [B, T, G, V]."""
  B, T, H, V = x_BTHV.shape
  return x_BTHV.reshape(B, T, G, H // G, V).sum(3)


# ---------------------------------------------------------------- front end --------------------

def tileable(n):
  return isinstance(n, int) and n >= 16 and not n & (n - 1)


def supports(head_dim, value_dim, block_size):
  """Whether the kernels take these sizes (Triton tiles: powers of two >= 16)."""
  return tileable(head_dim) and tileable(value_dim) and tileable(block_size)


def run(attend, q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, scale,
         block_size, return_k_cache, interpret, config):
  """The public functions' body: checks, padding to whole chunks, the chunk pieces, then
  `attend(chunks, v_BTGV, gate_BHT, seg_BT, call, dtypes)` (padded output o_BTHV; dtypes: of q
  and k) and, with `return_k_cache`, the keys moved to the sequence end."""
  config = KernelConfig(*config)
  if config.backend not in ('triton', 'mosaic'):
    raise ValueError(f"config.backend={config.backend!r}; expected 'triton' or 'mosaic'")
  if not tileable(block_size):
    raise ValueError(f"block_size: expected a power of two >= 16, got {block_size!r}")
  (B, T, H, G, K, V), arrays, acc, scale, gate_BTH = prepare_inputs(
      q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT, scale)
  for name, d in (("q_BTHK", K), ("v_BTGV", V)):
    if not tileable(d):
      raise ValueError(f"{name}: expected a head dim that is a power of two >= 16, got {d}")
  q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG = arrays
  C = block_size
  M = -(-T // C)
  pad = lambda x: jnp.pad(x, [(0, 0), (0, M * C - T)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
  chunks = chunk_pieces(pad(q_BTHK), pad(k_BTGK), pad(w_BTGK), pad(beta_BTG), C, M, acc)
  gate_BHT = None if gate_BTH is None else pad(gate_BTH.astype(jnp.float32)).swapaxes(1, 2)
  seg_BT = None if segment_ids_BT is None else pad(segment_ids_BT.astype(jnp.int32))
  call = Call(B, H, G, M * C, C, K, V, float(scale), config, bool(interpret))
  o_BTHV = attend(chunks, pad(v_BTGV), gate_BHT, seg_BT, call,
                  (q_BTHK.dtype, k_BTGK.dtype))[:, :T]
  if not return_k_cache:
    return o_BTHV
  # Keys at their chunk end are rounded to k's dtype first, as in path_blockwise.
  kn_BGMCK = chunks.kn_BGMCK.astype(k_BTGK.dtype).astype(acc)
  k_end_BTGK = keys_to_end(*(x.transpose(0, 2, 1, 3, 4)
                             for x in (kn_BGMCK, chunks.w_BGMCK, chunks.u_BGMCK)))
  return o_BTHV, k_end_BTGK[:, :T].astype(k_BTGK.dtype)
