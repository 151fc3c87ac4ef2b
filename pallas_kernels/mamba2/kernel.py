"""One Pallas kernel for every pass of chunked (log-linear) Mamba-2: a chunk scan over level
streams.

For a head h, in chunks of C tokens (positions aligned with the hierarchy: the sequence starts at
position 0), with G the in-chunk inclusive cumsum of the log-decay g, it computes

  causal (reverse=False):  out_t = sum_{s <= t} lam_t^(lvl(t, s)) exp(G_t - G_s) (a_t . b_s) c_s
  anti-causal (reverse):   out_s = sum_{t >= s} lam_t^(lvl(t, s)) exp(G_t - G_s) (a_s . b_t) c_t

with lvl(t, s) = bit_length(t XOR s) (docs/algorithms/loglinear.md#fenwick-levels), or lam = 1 when
the hierarchy is off (plain SSD). The forward pass is causal(q, k, v); the backward pass is
causal(dO, v, k) = dq, anti(v, dO, q) = dk and anti(k, q, dO) = dv (chunked.py).

One program per (batch, head, block of c's feature axis) scans the chunks sequentially (forward or
backward in time) inside a fori_loop. Pairs inside a chunk are the masked, decay-weighted (a b^T) c
product (levels 0 .. log2 C); pairs across chunks go through one fp32 [Ka, BV] state per chunk level
x (global level log2 C + 1 + x, the level-parallel masked scans of
docs/algorithms/loglinear.md#chunked-training): the causal stream is read (weighted by lam) in
chunks with bit x set, written in chunks with bit x clear and reset at every aligned block of
2^(x+1) chunks; the anti-causal one mirrors it. With the hierarchy off there is one stream, read and
written in every chunk.

Packed documents (pos / doc per token): lvl uses positions inside the document and pairs stay
inside one document; levels 1 .. log2 C cross a chunk boundary only into the neighbouring chunk (one
more masked block), and each level above keeps its stream with per-token reset / write / read
masks (hierarchy.level_stream_masks; the SSD stream resets at document starts). Exponents are
masked before exp and are all <= 0. Optionally (dq pass) it also returns
dlam_t^l = qx_t . (the unweighted level-l term of out_t), partial over the feature blocks.

Backend: the Pallas Triton lowering (pl.pallas_call + pltriton.CompilerParams;
docs/algorithms/loglinear.md#pallas-kernels): 2-D dots, power-of-two tiles, no scratch. Matmul
operands are the input dtype (bf16 on GPU) with fp32 accumulation; states, decays and level weights
are fp32 (per-token decay weights scale the rows of a state read after the matmul, so they are never
rounded; with precise_states, used by the backward's dq / dk passes, a state enters its matmuls as
hi + lo bf16 halves). Offsets stay below 2^31: the caller splits larger batches (chunked.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.linear_recurrence import dot, level_masks


def _split(x, mm_dtype):
  """x (fp32) as hi + lo, both in mm_dtype: two bf16 terms carry ~16 mantissa bits."""
  hi = x.astype(mm_dtype)
  return hi, (x - hi.astype(jnp.float32)).astype(mm_dtype)


def _dot_state(x, y, mm_dtype, precise, contract=(1, 0)):
  """x @ y (or x^T @ y) with x exact in mm_dtype and y fp32 (a state, or values times decay
  weights): with `precise`, y enters as hi + lo (two matmuls) instead of rounded to mm_dtype.

  Why: dg is a reverse cumsum over the whole sequence of q.dq - k.dk, so errors that the carried
  states put into dq / dk add up along T instead of averaging out; with bf16 states the relative
  dg error crossed the GPU tolerance (docs/correctness.md#gpu-tests) at T = 8192 and grows like
  sqrt(T); the split keeps it well inside (docs/correctness.md#long-sequence-gradient-check)."""
  if not precise or mm_dtype == jnp.float32:
    return dot(x, y, mm_dtype, contract)
  hi, lo = _split(y, mm_dtype)
  return dot(x, hi, mm_dtype, contract) + dot(x, lo, mm_dtype, contract)


def _kernel(*refs, C, N, intra_levels, streams, lam_levels, reverse, packed, with_dlam,
            mm_dtype, precise_states):
  refs = list(refs)
  a_ref, b_ref, c_ref, g_ref = refs[:4]
  del refs[:4]
  lam_ref = refs.pop(0) if lam_levels else None
  pos_ref, doc_ref = (refs.pop(0), refs.pop(0)) if packed else (None, None)
  qx_ref = refs.pop(0) if with_dlam else None
  o_ref = refs.pop(0)
  dlam_ref = refs.pop(0) if with_dlam else None
  Ka, BV = a_ref.shape[-1], c_ref.shape[-1]
  lo = C.bit_length()                        # aligned mode: level of chunk bit x is lo + x
  row = lax.broadcasted_iota(jnp.int32, (C, C), 0)
  col = lax.broadcasted_iota(jnp.int32, (C, C), 1)
  causal = (col >= row) if reverse else (row >= col)
  # aligned: chunk starts are multiples of C, so lvl(t, s) = bit_length(i XOR j)
  aligned_masks = None if packed else level_masks(row ^ col, intra_levels)

  def body(i, states):
    c = N - 1 - i if reverse else i
    sl = pl.ds(pl.multiple_of(c * C, C), C)
    a, b, v = a_ref[sl, :], b_ref[sl, :], c_ref[sl, :]
    g = g_ref[sl].astype(jnp.float32)
    G = jnp.cumsum(g)
    gs = jnp.sum(g)
    lam = [lam_ref[l, sl] for l in range(lam_levels)]
    ones = jnp.ones((C,), jnp.float32)
    lam_of = lambda lv: ones if lv is None else lam[lv]

    # intra-chunk pairs (exponents masked before exp)
    if packed:
      pos, doc = pos_ref[sl], doc_ref[sl]
      real = pos >= 0
      pair = causal & (doc[:, None] == doc[None, :]) & real[:, None] & real[None, :]
      masks = level_masks(pos[:, None] ^ pos[None, :], intra_levels) if lam_levels else None
    else:
      pair, masks = causal, aligned_masks
    if reverse:
      expo = jnp.where(pair, G[None, :] - G[:, None], -jnp.inf)
    else:
      expo = jnp.where(pair, G[:, None] - G[None, :], -jnp.inf)
    pd = dot(a, b, mm_dtype, (1, 1)) * jnp.exp(expo)
    p = pd
    if lam_levels:
      w = jnp.zeros((C, C), jnp.float32)
      for l, mask in enumerate(masks):
        w = w + jnp.where(mask, lam[l][None, :] if reverse else lam[l][:, None], 0.0)
      p = pd * w
    out = dot(p, v, mm_dtype)
    dlam = {}
    if with_dlam:
      qx = qx_ref[sl, :]
      z = pd * dot(qx, v, mm_dtype, (1, 1))
      dlam = {l: jnp.sum(jnp.where(mask, z, 0.0), axis=1) for l, mask in enumerate(masks)}

    if packed and lam_levels:
      # Levels 1 .. log2 C span less than C positions, so across chunks they only pair with the
      # neighbouring chunk (the previous one, or the next one when scanning backward): one more
      # masked (a b^T) c block instead of one state per level.
      near = min(lo, lam_levels)
      cn = jnp.maximum(c - 1, 0) if not reverse else jnp.minimum(c + 1, N - 1)
      sn = pl.ds(pl.multiple_of(cn * C, C), C)
      bn, vn, posn, docn = b_ref[sn, :], c_ref[sn, :], pos_ref[sn], doc_ref[sn]
      gn = g_ref[sn].astype(jnp.float32)
      Gn = jnp.cumsum(gn)
      npair = ((cn != c) & (doc[:, None] == docn[None, :]) & real[:, None]
               & (posn >= 0)[None, :])
      # causal: t here, s before (exp(G_t + gs_prev - G_s)); reverse: s here, t after
      nexpo = (G[:, None] + jnp.sum(gn) - Gn[None, :]) if not reverse else (
          Gn[None, :] + gs - G[:, None])
      nmasks = level_masks(pos[:, None] ^ posn[None, :], near)
      lamn = [lam_ref[l, sn] for l in range(near)] if reverse else lam
      wn = jnp.zeros((C, C), jnp.float32)
      for l in range(1, near):
        wn = wn + jnp.where(nmasks[l], lamn[l][None, :] if reverse else lamn[l][:, None], 0.0)
      pn = dot(a, bn, mm_dtype, (1, 1)) * jnp.exp(jnp.where(npair, nexpo, -jnp.inf))
      out = out + dot(pn * wn, vn, mm_dtype)
      if with_dlam:
        zn = pn * dot(qx, vn, mm_dtype, (1, 1))
        for l in range(1, near):
          dlam[l] = dlam[l] + jnp.sum(jnp.where(nmasks[l], zn, 0.0), axis=1)

    # cross-chunk pairs: one fp32 state per stream; (read, write) are per-token weights
    # (exp of the decay to / from the chunk boundary, masked) and keep scales the carried state.
    if packed:
      rweights, wweights, keeps, flags = [], [], [], []
      for lv in streams:
        if lv is None:                         # plain SSD: resets at document starts only
          reset, rd, wr = real & (pos == 0), real, real
        else:
          bit = ((pos >> (lv - 1)) & 1) == 1
          reset, rd, wr = real & ((pos & ((1 << lv) - 1)) == 0), real & bit, real & ~bit
        rc = jnp.cumsum(reset.astype(jnp.int32))
        rtot = jnp.sum(reset.astype(jnp.int32))
        if reverse:   # s-side reads pairs with no reset after s; t-side writes with none up to t
          rmask, wmask = wr & (rc == rtot), rd & (rc == 0)
          rw, ww = jnp.exp(gs - G), jnp.exp(G) * lam_of(lv)
        else:
          rmask, wmask = rd & (rc == 0), wr & (rc == rtot)
          rw, ww = jnp.exp(G), jnp.exp(gs - G)
        rweights.append(jnp.where(rmask, rw, 0.0))
        wweights.append(jnp.where(wmask, ww, 0.0))
        keeps.append(jnp.where(rtot == 0, jnp.exp(gs), 0.0))
        flags.append((jnp.sum(rmask.astype(jnp.int32)) > 0, jnp.sum(wmask.astype(jnp.int32)) > 0))
    else:
      rw_all = jnp.exp(gs - G) if reverse else jnp.exp(G)
      ww_all = jnp.exp(G) if reverse else jnp.exp(gs - G)
      ds_shared = None if reverse else _dot_state(b, v * ww_all[:, None], mm_dtype,
                                                  precise_states, (0, 0))

    new_states = []
    for k, (S, lv) in enumerate(zip(states, streams)):
      if packed:
        rw, ww, keep = rweights[k], wweights[k], keeps[k]
        read, write = flags[k]
      elif lv is None:                         # hierarchy off: read and write every chunk
        rw, ww, keep, read, write = rw_all, ww_all, jnp.exp(gs), None, None
      else:
        x = lv - lo
        bit = ((c >> x) & 1) == 1
        block = (1 << (x + 1)) - 1
        read, write = (~bit, bit) if reverse else (bit, ~bit)
        rw, keep = rw_all, jnp.where((c & block) == (block if reverse else 0), 0.0, jnp.exp(gs))
        ww = ww_all * lam[lv] if reverse else ww_all

      def do_read(S=S, rw=rw, lv=lv):
        r = rw[:, None] * _dot_state(a, S, mm_dtype, precise_states)
        dl = jnp.sum(qx.astype(jnp.float32) * r, axis=1) if with_dlam else jnp.zeros(
            (C,), jnp.float32)
        return (r if reverse else r * lam_of(lv)[:, None]), dl

      def do_write(S=S, ww=ww, keep=keep):
        if not packed and ds_shared is not None:
          return S * keep + ds_shared
        return S * keep + _dot_state(b, v * ww[:, None], mm_dtype, precise_states, (0, 0))

      if read is None:
        r, dl = do_read()
      else:
        r, dl = lax.cond(read, do_read, lambda: (jnp.zeros((C, BV), jnp.float32),
                                                 jnp.zeros((C,), jnp.float32)))
      out = out + r
      if with_dlam and lv is not None:
        dlam[lv] = dlam[lv] + dl if lv in dlam else dl
      if write is None:
        new_states.append(do_write())
      elif not packed and not reverse:         # shared write: no matmul to skip
        new_states.append(S * keep + ds_shared * write.astype(jnp.float32))
      else:
        new_states.append(lax.cond(write, do_write, lambda S=S, keep=keep: S * keep))
    o_ref[sl, :] = out.astype(o_ref.dtype)
    for l in range(lam_levels if with_dlam else 0):
      dlam_ref[l, sl] = dlam[l]
    return tuple(new_states)

  init = tuple(jnp.zeros((Ka, BV), jnp.float32) for _ in streams)
  lax.fori_loop(0, N, body, init)


def level_scan(a_BPXA, b_BPXA, c_BPXV, g_BHP, lam_BHLP=None, qx_BPXV=None, pos_BP=None,
               doc_BP=None, *, heads, chunk_size, reverse, levels=None, out_dtype=jnp.float32,
               block_v=32, num_warps=4, num_stages=1, precise_states=False, all_levels=False,
               interpret=False):
  """Runs the chunk scan (module docstring) over P = N * chunk_size padded tokens.

  Feature axes are powers of two >= 16; a/b/c/qx have X heads (G groups or H heads; head h reads
  h // (H // X)). levels: the L of lam (hierarchy on; lam_BHLP holds at least the levels a
  length-P sequence reaches, up to L) or None (hierarchy off). qx_BPXV (causal only) adds the dlam
  output [J, B, H, L', P] (J feature blocks, partial sums; L' levels computed). pos_BP / doc_BP
  (int32; pos -1 at padding) switch to packed documents: levels from positions inside documents,
  pairs only inside a document, levels 1 .. log2 C across chunks from the neighbouring chunk and
  every higher level a stream with per-token masks.
  precise_states: state reads and writes as two bf16 matmuls (hi + lo, `_dot_state`); the
  backward's dq and dk passes use it, since dg sums their errors over the whole sequence.
  all_levels: positions do not start at 0 (they continue an initial state's), so every one of
  the L levels may occur, not only those a length-P sequence reaches (packed mode).
  Returns out_BPHV [, dlam_JBHLP].
  """
  B, P, _, Ka = a_BPXA.shape
  Vc = c_BPXV.shape[-1]
  C = chunk_size
  N = P // C
  H = heads
  BV = min(block_v, Vc)
  J = Vc // BV
  lo = C.bit_length()                                  # log2 C + 1: levels inside a chunk
  packed = pos_BP is not None
  if levels is None:
    intra_levels, streams, lam_levels = 1, (None,), 0
  else:
    hi = levels if all_levels else min(levels, (P - 1).bit_length() + 1)
    intra_levels = hi if packed else min(lo, hi)
    streams = tuple(range(lo, hi))
    lam_levels = hi
  mm_dtype = jnp.result_type(a_BPXA.dtype, b_BPXA.dtype, c_BPXV.dtype)

  def seq_spec(x, width, blocked):
    r = H // x.shape[2]
    if blocked:
      return pl.BlockSpec((None, P, None, width), lambda b, h, j: (b, 0, h // r, j))
    return pl.BlockSpec((None, P, None, width), lambda b, h, j: (b, 0, h // r, 0))

  in_specs = [seq_spec(a_BPXA, Ka, False), seq_spec(b_BPXA, Ka, False),
              seq_spec(c_BPXV, BV, True), pl.BlockSpec((None, None, P), lambda b, h, j: (b, h, 0))]
  args = [a_BPXA, b_BPXA, c_BPXV, g_BHP]
  if lam_levels:
    in_specs.append(pl.BlockSpec((None, None, lam_levels, P), lambda b, h, j: (b, h, 0, 0)))
    args.append(lam_BHLP[:, :, :lam_levels])
  if packed:
    in_specs += [pl.BlockSpec((None, P), lambda b, h, j: (b, 0))] * 2
    args += [pos_BP, doc_BP]
  out_shape = [jax.ShapeDtypeStruct((B, P, H, Vc), out_dtype)]
  out_specs = [pl.BlockSpec((None, P, None, BV), lambda b, h, j: (b, 0, h, j))]
  with_dlam = qx_BPXV is not None
  if with_dlam:
    in_specs.append(seq_spec(qx_BPXV, BV, True))
    args.append(qx_BPXV)
    out_shape.append(jax.ShapeDtypeStruct((J, B, H, lam_levels, P), jnp.float32))
    out_specs.append(pl.BlockSpec((None, None, None, lam_levels, P),
                                  lambda b, h, j: (j, b, h, 0, 0)))
  kernel = functools.partial(_kernel, C=C, N=N, intra_levels=intra_levels, streams=streams,
                             lam_levels=lam_levels, reverse=reverse, packed=packed,
                             with_dlam=with_dlam, mm_dtype=mm_dtype,
                             precise_states=precise_states)
  outs = pl.pallas_call(
      kernel, grid=(B, H, J), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret, name='loglinear_level_scan_' + ('rev' if reverse else 'fwd'),
  )(*args)
  return tuple(outs) if with_dlam else outs[0]
