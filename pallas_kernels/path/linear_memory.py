"""PaTH attention kernels whose memory grows linearly in T: one level's query / key copies at a
time. An opt-in beside the default `kernel.py` (same arguments and outputs), for long contexts
where memory binds: `model.mixer_options.path.linear_memory=True` (or `.path_fox`) selects it.

Trade-off: compiled fwd+bwd memory grows linearly in T where the default kernels' copies grow
as T log T, but every level's copies are rebuilt in the backward, so fwd+bwd is slower (both
measured: benchmarks/RESULTS.md#path-attention). Pick it when the default's copies do not fit;
otherwise the default is the faster.

Algorithm: that of `kernel.py` (dyadic levels; query chunk i and key chunk j meet at level
`bit_length(i ^ j)` through copies Q^l, K^l moved there by aligned block products of the chunks'
compact-WY factors, a segment tree). The copies of level l + 1 are those of level l after one
cross (a chunk's rows times one tree block), so only one level's copies exist at a time: memory
O(T (K + C)) per head plus O(T K^2 / C) per key head (the tree); no T x T matrix exists.

  common.chunk_pieces  XLA, differentiable by autodiff: UT pieces, level-0 copies, in-chunk z;
                       `segment_tree` concatenated into one flat tree (offsets: _tree_start).
  _attend       custom_vjp over the levels. Forward: level 0 (with the diagonal tiles), then a
                fori_loop that crosses the copies up one level (`path_cross` kernel) and runs
                the attention kernel of that level on the running softmax (m, l, acc).
                Backward, levels downward: each level's copies rebuilt from level 0 in one
                `path_cross` pass (the rows stay in registers across the l crosses; O(L^2) chunk
                x block products, ~2% of the attention work at 131K), the dq / dkv
                kernels of that level, then the copies' cotangents moved down one level (the
                transposed cross) and the tree's gradient added by `path_tree_grad` (one
                program per pair of aligned blocks, summing over the chunks that crossed them).
Gate and segment masks act on exponents. Matmul operands in the input dtype (bf16 on GPU),
accumulation in float32; the copies are carried in float32, their products at HIGHEST precision
for float32 inputs and at default (TF32) precision for 16-bit inputs. Triton lowering, as
`kernel.py`; the copy kernels launch with 8 warps and 1 stage (no spills in ptxas for sm_90).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.path.common import (
    KernelConfig, copy_precision, diagonal_dkv, diagonal_tile, dkv_step, dot, dq_step, keys_below,
    num_levels, output_delta, probs, queries_above, run, segment_tree, softmax_start, softmax_step,
    sum_groups, token_side)

# ---------------------------------------------------------------- copy moves (Pallas) ----------

def _tree_levels(tree_BGNKK):
  return (tree_BGNKK.shape[2] + 2).bit_length() - 2  # the flat tree holds 2^(L+1) - 2 blocks


def _tree_start(s, L):
  """Offset of level s in the flat tree (levels of 2^L, 2^(L-1), ..., 2 blocks)."""
  return 2 ** (L + 1) - jnp.left_shift(2, L - s)


def _cross_kernel(levels_ref, x_ref, tree_ref, y_ref, *, query, transpose, L, precision):
  """One chunk's rows moved from level lo to level hi, one cross per level s: queries whose chunk
  has bit s set cross the block of 2^s chunks just below their boundary (`x P`), keys whose chunk
  has it clear the block just above (`x P^T`). `transpose` (one level only) applies the
  transposed map, the vjp in x. The rows stay in registers between levels."""
  c = pl.program_id(2)

  def cross(s, x_CK):
    moves = ((c >> s) & 1) == (1 if query else 0)
    idx = jnp.where(moves, _tree_start(s, L) + (c >> s) + (-1 if query else 1), 0)
    y_CK = dot(x_CK, tree_ref[idx], trans_b=query == transpose, precision=precision)
    return jnp.where(moves, y_CK, x_CK)

  y_ref[...] = jax.lax.fori_loop(levels_ref[0], levels_ref[1], cross, x_ref[...])


def _cross(x, tree_BGNKK, lo, hi=None, *, query, call, precision, transpose=False):
  """`_cross_kernel` over every chunk, levels lo .. hi - 1 (default: lo only); x is q_BGRMCK
  (query) or k_BGMCK, float32."""
  B, G, M, C, K = (x.shape[:2] + x.shape[-3:])
  R = x.shape[2] if query else 1
  N, L = tree_BGNKK.shape[2], _tree_levels(tree_BGNKK)
  rows = pl.BlockSpec((None, None, None, C, K), lambda b, h, c: (b, h // R, h % R, c, 0))
  levels = jnp.stack([jnp.asarray(lo, jnp.int32), jnp.asarray(lo + 1 if hi is None else hi,
                                                              jnp.int32)])
  y = pl.pallas_call(
      functools.partial(_cross_kernel, query=query, transpose=transpose, L=L,
                        precision=precision),
      grid=(B, G * R, M),
      in_specs=[pl.BlockSpec((2,), lambda b, h, c: (0,)), rows,
                pl.BlockSpec((None, None, N, K, K), lambda b, h, c: (b, h // R, 0, 0, 0))],
      out_specs=rows,
      out_shape=jax.ShapeDtypeStruct((B, G, R, M * C, K), x.dtype),
      compiler_params=pltriton.CompilerParams(num_warps=8, num_stages=1),  # no spills (ptxas)
      interpret=call.interpret, name="path_cross",
  )(levels, x.reshape(B, G, R, M * C, K), tree_BGNKK)
  return y.reshape(x.shape)


def _tree_grad_kernel(lv_ref, q_ref, gq_ref, k_ref, gk_ref, dtree_in, dtree_ref, *, C, M, L,
                      precision):
  """Adds level s's tree-block gradients of one pair of aligned blocks: the lower block from the
  queries that crossed it (sum of Q^T dQ' over the upper half's chunks and the heads), the upper
  block from the keys (sum of dK'^T K over the lower half's chunks)."""
  a, s = pl.program_id(2), lv_ref[0]
  R, start, half = q_ref.shape[0], _tree_start(s, L), 1 << s

  @pl.when(a < (1 << (L - 1 - s)))
  def _():
    for side, (x_ref, g_ref, heads) in enumerate(((q_ref, gq_ref, R), (k_ref, gk_ref, 1))):
      first = (2 * a + 1 - side) * half  # queries: the upper half; keys: the lower half
      n = jnp.clip(M - first, 0, half)

      def step(t, acc_KK, x_ref=x_ref, g_ref=g_ref, first=first, n=n, side=side):
        r, rows = t // n, pl.ds((first + t % n) * C, C)
        x_CK, g_CK = x_ref[r, rows, :], g_ref[r, rows, :]
        return acc_KK + (dot(x_CK, g_CK, trans_a=True, precision=precision) if side == 0
                         else dot(g_CK, x_CK, trans_a=True, precision=precision))

      K = x_ref.shape[-1]
      acc_KK = jax.lax.fori_loop(0, heads * n, step, jnp.zeros((K, K), jnp.float32))
      idx = start + 2 * a + side
      dtree_ref[idx] = dtree_in[idx] + acc_KK


def _tree_grad(dtree_BGNKK, q_BGRMCK, gq_BGRMCK, k_BGMCK, gk_BGMCK, s, *, call, precision):
  """dtree += level s's gradients (`_tree_grad_kernel`), in place."""
  B, G, R, M, C, K = q_BGRMCK.shape
  N, L = dtree_BGNKK.shape[2], _tree_levels(dtree_BGNKK)

  def heads(n):
    return pl.BlockSpec((None, None, n, M * C, K), lambda b, g, a: (b, g, 0, 0, 0))
  tree = pl.BlockSpec((None, None, N, K, K), lambda b, g, a: (b, g, 0, 0, 0))
  return pl.pallas_call(
      functools.partial(_tree_grad_kernel, C=C, M=M, L=L, precision=precision),
      grid=(B, G, 2 ** (L - 1)),
      in_specs=[pl.BlockSpec((1,), lambda b, g, a: (0,)), heads(R), heads(R), heads(1), heads(1),
                tree],
      out_specs=tree,
      out_shape=jax.ShapeDtypeStruct(dtree_BGNKK.shape, dtree_BGNKK.dtype),
      input_output_aliases={5: 0},
      compiler_params=pltriton.CompilerParams(num_warps=8, num_stages=1),
      interpret=call.interpret, name="path_tree_grad",
  )(jnp.full((1,), s, jnp.int32), *(x.reshape(B, G, -1, M * C, K) for x in (
      q_BGRMCK, gq_BGRMCK, k_BGMCK, gk_BGMCK)), dtree_BGNKK)


def _level_inputs(s, q_BGRMCK, k_BGMCK, dtypes):
  """A level's copies in the kernels' layout and dtypes: [B, H, T, K] and [B, G, T, K]."""
  B, G, R, M, C, K = q_BGRMCK.shape
  return (jnp.full((1,), s, jnp.int32), q_BGRMCK.reshape(B, G * R, M * C, K).astype(dtypes[0]),
          k_BGMCK.reshape(B, G, M * C, K).astype(dtypes[1]))


# ---------------------------------------------------------------- attention kernels (one level) -

def _fwd_kernel(lv_ref, q_ref, k_ref, z_ref, v_ref, g_ref, seg_ref, stats_refs, m_out, l_out,
                acc_out, *, scale, qk_scale, C, M):
  """One query chunk of one head at one level: the key chunks below its level boundary, added
  to the running softmax (m, l, acc); the first call (z given) starts from the diagonal tile."""
  i = M - 1 - pl.program_id(2)
  rows = pl.ds(i * C, C)
  here = token_side(g_ref, seg_ref, rows)
  if z_ref is not None:
    carry = softmax_start(diagonal_tile(z_ref[...], here, qk_scale), v_ref[rows, :])
  else:
    carry = tuple(ref[...] for ref in stats_refs)
  mid, trips = keys_below(i, lv_ref[0])
  q_CK = q_ref[rows, :]

  def step(t, carry):
    cols = pl.ds((mid - 1 - t) * C, C)
    return softmax_step(carry, q_CK, k_ref[cols, :], v_ref[cols, :], here,
                         token_side(g_ref, seg_ref, cols), qk_scale)

  m_out[...], l_out[...], acc_out[...] = jax.lax.fori_loop(0, trips, step, carry)


def _dq_kernel(lv_ref, q_ref, k_ref, z_ref, v_ref, g_ref, seg_ref, do_ref, lse_ref, delta_ref,
               dq_ref, dgq_ref, dz_ref, *, scale, qk_scale, C, M):
  """dQ of one query chunk of one head at one level and its gate row sums; with z given (the
  first call), also the diagonal tile's dz and row sums."""
  i = M - 1 - pl.program_id(2)
  rows = pl.ds(i * C, C)
  here = token_side(g_ref, seg_ref, rows)
  stats = (lse_ref[...], delta_ref[...], do_ref[...])
  dg_C = jnp.zeros((C,), jnp.float32)
  if z_ref is not None:
    _, ds_CC = probs(diagonal_tile(z_ref[...], here, qk_scale), v_ref[rows, :], stats)
    dz_ref[...] = scale * ds_CC
    dg_C = jnp.sum(ds_CC, axis=1)
  mid, trips = keys_below(i, lv_ref[0])
  q_CK = q_ref[rows, :]

  def step(t, carry):
    cols = pl.ds((mid - 1 - t) * C, C)
    return dq_step(carry, q_CK, k_ref[cols, :], v_ref[cols, :], here,
                    token_side(g_ref, seg_ref, cols), qk_scale, stats)

  dq_CK, dg_C = jax.lax.fori_loop(0, trips, step, (jnp.zeros(q_CK.shape, jnp.float32), dg_C))
  dq_ref[...] = scale * dq_CK
  dgq_ref[...] = scale * dg_C


def _dkv_kernel(lv_ref, q_ref, k_ref, z_ref, v_ref, g_ref, seg_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, dgk_ref, *, scale, qk_scale, C, M):
  """dK, dv and the gate column sums of one key chunk, for one query head at one level; with z
  given (the first call), the diagonal tile's dv and column sums too."""
  j = pl.program_id(2)
  cols = pl.ds(j * C, C)
  here = token_side(g_ref, seg_ref, cols)
  v_CV = v_ref[...]
  stats = lambda rows: (lse_ref[rows], delta_ref[rows], do_ref[rows, :])  # noqa: E731
  if z_ref is None:
    dv_CV, dg_C = jnp.zeros(v_CV.shape, jnp.float32), jnp.zeros((C,), jnp.float32)
  else:
    dv_CV, dg_C = diagonal_dkv(z_ref[...], here, qk_scale, v_CV, stats(cols))
  start, trips = queries_above(j, lv_ref[0], M)
  k_CK = k_ref[cols, :]

  def step(t, carry):
    rows = pl.ds((start + t) * C, C)
    return dkv_step(carry, q_ref[rows, :], k_CK, v_CV, token_side(g_ref, seg_ref, rows), here,
                     qk_scale, stats(rows))

  dk_CK, dv_CV, dg_C = jax.lax.fori_loop(
      0, trips, step, (jnp.zeros(k_CK.shape, jnp.float32), dv_CV, dg_C))
  dk_ref[...] = scale * dk_CK
  dv_ref[...] = dv_CV
  dgk_ref[...] = -scale * dg_C


def _fwd_level(call, lv, q_BHTK, k_BGTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, stats):
  """The forward kernel at one level; `stats` = (m_BHT, l_BHT, acc_BTHV), None on the first."""
  B, H, Tp, V = call.B, call.H, call.Tp, call.V
  specs, chunk = call.specs(levels=None, first=stats is None, gate=gate_BHT is not None,
                            seg=seg_BT is not None, key_major=False)
  stat_specs = [call.rows_spec(chunk), call.rows_spec(chunk), call.values_spec(chunk)]
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
  flags = dict(levels=None, first=first, gate=gate_BHT is not None, seg=seg_BT is not None,
               backward=True)
  args = (lv, q_BHTK, k_BGTK, z_BHTC, v_BTGV, gate_BHT, seg_BT, do_BTHV, lse_BHT, delta_BHT)
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731

  specs, chunk = call.specs(key_major=False, **flags)
  dq_BHTK, dgq_BHT, dz_BHTC = call(
      _dq_kernel, "path_attention_bwd_dq", specs,
      [pl.BlockSpec((None, None, C, K), lambda h, b, n: (b, h, chunk(n), 0)),
       call.rows_spec(chunk),
       pl.BlockSpec((None, None, C, C), lambda h, b, n: (b, h, chunk(n), 0)) if first else None],
      [f32(B, H, Tp, K), f32(B, H, Tp), f32(B, H, Tp, C) if first else None], *args)

  specs, chunk = call.specs(key_major=True, **flags)
  dk_BHTK, dv_BTHV, dgk_BHT = call(
      _dkv_kernel, "path_attention_bwd_dkv", specs,
      [pl.BlockSpec((None, None, C, K), lambda h, b, n: (b, h, n, 0)),
       call.values_spec(chunk), call.rows_spec(chunk)],
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
  L = num_levels(call.M)
  cross = functools.partial(_cross, tree_BGNKK=tree_BGNKK, call=call,
                            precision=copy_precision(dtypes[0]))
  fixed = (v_BTGV, gate_BHT, seg_BT)
  stats = _fwd_level(call, *_level_inputs(0, qhat_BGRMCK, kn_BGMCK, dtypes), z_BHTC, *fixed, None)

  def level(s, carry):
    q_BGRMCK = cross(carry[0], lo=s - 1, query=True)
    k_BGMCK = cross(carry[1], lo=s - 1, query=False)
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
  L = num_levels(M)
  fixed = (v_BTGV, gate_BHT, seg_BT, do_BTHV.astype(o_BTHV.dtype), lse_BHT,
           output_delta(o_BTHV, do_BTHV))
  precision = copy_precision(dtypes[0])
  cross = functools.partial(_cross, call=call, precision=precision)

  def level(s, q_BGRMCK, k_BGMCK, z_BHTC, carry):
    """Adds level s's gradients; carry[:2] = cotangents of level s + 1's copies -> level s's."""
    gq_BGRMCK, gk_BGMCK, dtree_BGNKK, dv_BTHV, dgate_BHT = carry
    dq_BHTK, dk_BHTK, dv_l, dgate_l, dz_BHTC = _bwd_level(
        call, *_level_inputs(s, q_BGRMCK, k_BGMCK, dtypes), z_BHTC, *fixed)
    dtree_BGNKK = _tree_grad(dtree_BGNKK, q_BGRMCK, gq_BGRMCK, k_BGMCK, gk_BGMCK, s, call=call,
                             precision=precision)
    up_q = cross(gq_BGRMCK, tree_BGNKK, s, query=True, transpose=True)
    up_k = cross(gk_BGMCK, tree_BGNKK, s, query=False, transpose=True)
    return (dq_BHTK.reshape(qhat_BGRMCK.shape) + up_q,
            dk_BHTK.reshape(B, G, R, M, C, K).sum(2) + up_k,
            dtree_BGNKK, dv_BTHV + dv_l, dgate_BHT + dgate_l), dz_BHTC

  def upper_level(n, carry):
    s = L - 1 - n  # level s's copies rebuilt from level 0 in one pass each
    q_BGRMCK = cross(qhat_BGRMCK, tree_BGNKK, 0, s, query=True)
    k_BGMCK = cross(kn_BGMCK, tree_BGNKK, 0, s, query=False)
    return level(s, q_BGRMCK, k_BGMCK, None, carry)[0]

  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)  # noqa: E731
  carry = (zeros(qhat_BGRMCK), zeros(kn_BGMCK), zeros(tree_BGNKK), zeros(o_BTHV),
           zeros(lse_BHT))
  carry = jax.lax.fori_loop(0, L - 1, upper_level, carry)
  (dqhat, dkn, dtree, dv_BTHV, dgate_BHT), dz_BHTC = level(0, qhat_BGRMCK, kn_BGMCK, z_BHTC,
                                                           carry)
  dv_BTGV = sum_groups(dv_BTHV, G).astype(v_BTGV.dtype)
  dgate_BHT = None if gate_BHT is None else dgate_BHT.astype(gate_BHT.dtype)
  return dqhat, dkn, dtree, dz_BHTC, dv_BTGV, dgate_BHT, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _attend_levels(chunks, v_BTGV, gate_BHT, seg_BT, call, dtypes):
  tree = segment_tree(chunks.w_BGMCK, chunks.u_BGMCK, num_levels(call.M),
                       copy_precision(dtypes[0]))
  return _attend(chunks.qhat_BGRMCK, chunks.kn_BGMCK, jnp.concatenate(tree, axis=2),
                 chunks.z_BHTC, v_BTGV, gate_BHT, seg_BT, call, dtypes)


def path_attention_linear_memory(q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, *, g_BTH=None,
                                 segment_ids_BT=None, scale=None, block_size=64,
                                 return_k_cache=False, interpret=False, config=KernelConfig()):
  """`path_attention`'s semantics, arguments and outputs (the keys at the sequence end for the
  decode cache included) with fwd+bwd memory linear in T, at about half its speed (module
  docstring). `config` sets the attention kernels' launch; the copy kernels keep their own.
  """
  backend = KernelConfig(*config).backend
  if backend != 'triton':
    raise ValueError(f"path_attention_linear_memory: config.backend={backend!r}; its kernels "
                     "run on Triton only (backend='mosaic' serves path_attention)")
  return run(_attend_levels, q_BTHK, k_BTGK, v_BTGV, w_BTGK, beta_BTG, g_BTH, segment_ids_BT,
              scale, block_size, return_k_cache, interpret, config)
