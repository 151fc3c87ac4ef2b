"""One Pallas kernel for every pass of chunked (log-linear) Mamba-2: a chunk scan over level streams.

For a head h, in chunks of C tokens (positions aligned with the hierarchy: the sequence starts at
position 0), with G the in-chunk inclusive cumsum of the log-decay g, it computes

  causal (reverse=False):  out_t = sum_{s <= t} lam_t^(lvl(t, s)) exp(G_t - G_s) (a_t . b_s) c_s
  anti-causal (reverse):   out_s = sum_{t >= s} lam_t^(lvl(t, s)) exp(G_t - G_s) (a_s . b_t) c_t

with lvl(t, s) = bit_length(t XOR s) (kernels.md §3.1), or lam = 1 when the hierarchy is off
(plain SSD). The forward pass is causal(q, k, v); the backward pass is causal(dO, v, k) = dq,
anti(v, dO, q) = dk and anti(k, q, dO) = dv (pallas_kernels/loglinear/__init__.py).

One program per (batch, head, block of c's feature axis) scans the chunks sequentially (forward or
backward in time) inside a fori_loop. Pairs inside a chunk are the masked, decay-weighted
(a b^T) c product (levels 0 .. log2 C); pairs across chunks go through one fp32 [Ka, BV] state per
chunk level x (global level log2 C + 1 + x, the level-parallel masked scans of kernels.md §3.5 b):
the causal stream is read (weighted by lam) in chunks with bit x set, written in chunks with bit x
clear and reset at every aligned block of 2^(x+1) chunks; the anti-causal one mirrors it. With the
hierarchy off there is one stream, read and written in every chunk. Exponents are masked before
exp and are all <= 0. Optionally (dq pass) it also returns dlam_t^l = qx_t . (the unweighted level-l
term of out_t), partial over the feature blocks.

Backend: the Pallas Triton lowering (pl.pallas_call + pltriton.CompilerParams; jax-stack.md 2.4,
2.8): 2-D dots, power-of-two tiles, no scratch. Matmul operands are the input dtype (bf16 on GPU)
with fp32 accumulation; states, decays and level weights are fp32. Offsets stay below 2^31: the
caller splits larger batches (pallas_kernels/loglinear/__init__.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

HIGHEST = lax.Precision.HIGHEST


def _dot(x, y, mm_dtype):
  return jnp.dot(x.astype(mm_dtype), y.astype(mm_dtype), precision=HIGHEST,
                 preferred_element_type=jnp.float32)


def _kernel(*refs, C, N, intra_levels, streams, lam_levels, reverse, with_dlam, mm_dtype):
  if lam_levels:
    a_ref, b_ref, c_ref, g_ref, lam_ref, *refs = refs
  else:
    a_ref, b_ref, c_ref, g_ref, *refs = refs
  if with_dlam:
    qx_ref, o_ref, dlam_ref = refs
  else:
    (o_ref,) = refs
  Ka, BV = a_ref.shape[-1], c_ref.shape[-1]
  row = lax.broadcasted_iota(jnp.int32, (C, C), 0)
  col = lax.broadcasted_iota(jnp.int32, (C, C), 1)
  # in-chunk level masks (chunk starts are multiples of C, so lvl(t, s) = bit_length(i XOR j))
  same = [row == col] + [(row >> l) == (col >> l) for l in range(1, intra_levels)]
  level_masks = [same[0]] + [same[l] & ~same[l - 1] for l in range(1, intra_levels)]

  def body(i, states):
    c = N - 1 - i if reverse else i
    sl = pl.ds(pl.multiple_of(c * C, C), C)
    a, b, v = a_ref[sl, :], b_ref[sl, :], c_ref[sl, :]
    g = g_ref[sl].astype(jnp.float32)
    G = jnp.cumsum(g)
    gs = jnp.sum(g)
    lam = [lam_ref[l, sl] for l in range(lam_levels)]

    # intra-chunk pairs
    ab = lax.dot_general(a.astype(mm_dtype), b.astype(mm_dtype), (((1,), (1,)), ((), ())),
                         precision=HIGHEST, preferred_element_type=jnp.float32)
    if reverse:
      expo = jnp.where(col >= row, G[None, :] - G[:, None], -jnp.inf)
    else:
      expo = jnp.where(row >= col, G[:, None] - G[None, :], -jnp.inf)
    pd = ab * jnp.exp(expo)
    p = pd
    if lam_levels:
      w = jnp.zeros((C, C), jnp.float32)
      for l, mask in enumerate(level_masks):
        w = w + jnp.where(mask, lam[l][None, :] if reverse else lam[l][:, None], 0.0)
      p = pd * w
    out = _dot(p, v, mm_dtype)
    dlam_cols = []
    if with_dlam:
      qx = qx_ref[sl, :]
      z = pd * lax.dot_general(qx.astype(mm_dtype), v.astype(mm_dtype), (((1,), (1,)), ((), ())),
                               precision=HIGHEST, preferred_element_type=jnp.float32)
      dlam_cols = [jnp.sum(jnp.where(mask, z, 0.0), axis=1) for mask in level_masks]

    # cross-chunk pairs: one state per stream
    read_w = jnp.exp(gs - G) if reverse else jnp.exp(G)
    a_read = a * read_w[:, None]
    if not reverse:
      ds_shared = lax.dot_general(b.astype(mm_dtype), (v * jnp.exp(gs - G)[:, None]).astype(mm_dtype),
                                  (((0,), (0,)), ((), ())), precision=HIGHEST,
                                  preferred_element_type=jnp.float32)
    new_states = []
    for S, x in zip(states, streams):
      if x is None:                      # hierarchy off: read and write every chunk
        out = out + _dot(a_read, S, mm_dtype)
        new_states.append(S * jnp.exp(gs) + (ds_shared if not reverse else lax.dot_general(
            b.astype(mm_dtype), (v * jnp.exp(G)[:, None]).astype(mm_dtype),
            (((0,), (0,)), ((), ())), precision=HIGHEST, preferred_element_type=jnp.float32)))
        continue
      lv = intra_levels + x
      bit = ((c >> x) & 1) == 1
      block = (1 << (x + 1)) - 1
      read, write = (~bit, bit) if reverse else (bit, ~bit)
      reset = (c & block) == (block if reverse else 0)

      def do_read(S=S, lv=lv):
        r = _dot(a_read, S, mm_dtype)
        rw = r if reverse else r * lam[lv][:, None]
        dl = jnp.sum(qx.astype(jnp.float32) * r, axis=1) if with_dlam else jnp.zeros((C,), jnp.float32)
        return rw, dl

      def no_read():
        return jnp.zeros((C, BV), jnp.float32), jnp.zeros((C,), jnp.float32)

      r, dl = lax.cond(read, do_read, no_read)
      out = out + r
      if with_dlam:
        dlam_cols.append(dl)
      keep = jnp.where(reset, 0.0, jnp.exp(gs))
      if reverse:
        def do_write(S=S, lv=lv, keep=keep):
          vw = (v * (jnp.exp(G) * lam[lv])[:, None]).astype(mm_dtype)
          return S * keep + lax.dot_general(b.astype(mm_dtype), vw, (((0,), (0,)), ((), ())),
                                            precision=HIGHEST, preferred_element_type=jnp.float32)
        new_states.append(lax.cond(write, do_write, lambda S=S, keep=keep: S * keep))
      else:
        new_states.append(S * keep + ds_shared * write.astype(jnp.float32))
    o_ref[sl, :] = out.astype(o_ref.dtype)
    for l, col_l in enumerate(dlam_cols):
      dlam_ref[l, sl] = col_l
    return tuple(new_states)

  init = tuple(jnp.zeros((Ka, BV), jnp.float32) for _ in streams)
  lax.fori_loop(0, N, body, init)


def level_scan(a_BPXA, b_BPXA, c_BPXV, g_BHP, lam_BHLP=None, qx_BPXV=None, *, heads, chunk_size,
               reverse, levels=None, out_dtype=jnp.float32, block_v=32, num_warps=4,
               num_stages=1, interpret=False):
  """Runs the chunk scan (module docstring) over P = N * chunk_size padded tokens.

  Feature axes are powers of two >= 16; a/b/c/qx have X heads (G groups or H heads; head h reads
  h // (H // X)). levels: the L of lam (hierarchy on; lam_BHLP holds at least the levels a
  length-P sequence reaches, up to L) or None (hierarchy off). qx_BPXV (causal only) adds the dlam
  output [P // ..., J, B, H, L', P] (J feature blocks, partial sums; L' levels computed).
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
  if levels is None:
    intra_levels, streams, lam_levels = 1, (None,), 0
  else:
    hi = min(levels, (P - 1).bit_length() + 1)
    intra_levels = min(lo, levels)
    streams = tuple(range(max(hi - lo, 0)))
    lam_levels = intra_levels + len(streams)
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
                             lam_levels=lam_levels, reverse=reverse, with_dlam=with_dlam,
                             mm_dtype=mm_dtype)
  outs = pl.pallas_call(
      kernel, grid=(B, H, J), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret, name='loglinear_level_scan_' + ('rev' if reverse else 'fwd'),
  )(*args)
  return tuple(outs) if with_dlam else outs[0]
