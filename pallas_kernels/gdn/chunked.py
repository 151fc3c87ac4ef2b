"""Chunked Gated DeltaNet and log-linear Gated DeltaNet through the Pallas kernels: launch
(padding, packed-document masks, batch splits) and the jax.custom_vjp of each.

  GDN             chunkwise.py's kernels: the UT transform, the output and every gradient in
                  kernels parallel over chunks, around two sequential state scans (forward and
                  its transpose); nothing per chunk but the states' residuals leaves the kernels.
  log-linear GDN  rows of one document (level_streams='gdn', the default): one UT transform, the
                  levels inside a chunk in XLA on its T_g (`_intra_of_t`), every level above as
                  plain GDN on the kernels above (`_streams_mixer`: each level stream is a GDN run
                  on rows whose "documents" are its 2^l blocks, values written in a block's first
                  half, output read in its second). Packed rows and states: every level >= 1 as
                  such a GDN run (`_every_level_streams`), level 0 in XLA. level_streams='scan':
                  kernel.py's level-stream scans (forward and reverse) beside a parallel per-chunk
                  part in XLA (`_prep`, differentiated with jax.vjp for the backward) whose UT
                  inverse T is chunkwise's kernel and its transpose (`_ut_inverse`).

Same signatures and semantics as lloglin.ops.gdn.gdn_chunked and
lloglin.ops.loglinear.loglinear_gdn_chunked, plus `interpret` and `config`.

Served by the kernels: any segment_ids_BT (decided at run time with lax.cond: GDN's rows of one
document each without padding take the aligned kernels on the inputs as given, log-linear GDN's
rows of one document then padding the aligned kernels with padding zeroed; packed documents, and
GDN's rows with padding, the packed kernels, padding zeroed), chunk_size >= 16; GDN's initial
state (the state scan starts from it; its cotangent is the transposed scan's carried dS after
chunk 0) and final state (the carried state after the last chunk; its cotangent seeds the
transposed scan); log-linear GDN's FenwickState from the packed kernels' streams, one per level
>= 1, plus level 0 = beta k v^T of the last token; its initial FenwickState enters as those
streams' initial states, positions continuing from its t_B.
chunk_size < 16 and T beyond the capacity of the L levels run the XLA form, so no argument is
ever silently ignored. Feature axes are zero-padded to powers of two (>= 16) and T to whole
chunks; batches whose arrays would reach 2^31 elements are split
(pallas_kernels.linear_recurrence, which also holds the launch defaults GDN_CONFIG and
LOGLINEAR_GDN_CONFIG). Speed against fla's GDN kernel: benchmarks/RESULTS.md#mixer-kernels.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lloglin.ops import checks
from lloglin.ops import gdn as ops_gdn
from lloglin.ops import hierarchy
from lloglin.ops import linear_recurrence
from lloglin.ops import loglinear as ops_loglinear
from pallas_kernels.gdn import chunkwise
from pallas_kernels.gdn.kernel import gdn_scan, gdn_scan_bwd, stream_levels
from pallas_kernels.linear_recurrence import (GDN_CONFIG, LOGLINEAR_GDN_CONFIG, KernelConfig,
                                              gate_layouts, in_row_batches, launch_config,
                                              one_document_per_row, padded_inputs, pow2)

__all__ = ['gdn_chunked', 'loglinear_gdn_chunked']

HIGHEST = lax.Precision.HIGHEST
# the XLA parts' products: float32, never TF32
_ein = functools.partial(jnp.einsum, precision=HIGHEST, preferred_element_type=jnp.float32)


def _chunk_heads(x_BPGK, H, C):
  """[B, P, G, K] (groups of heads) -> float32 [B, N, C, H, K], every value head its group's."""
  B, P, _, K = x_BPGK.shape
  return linear_recurrence.expand_groups(x_BPGK, H).astype(jnp.float32).reshape(B, P // C, C, H, K)


class _Static(NamedTuple):
  chunk_size: int
  scale: float
  levels: int | None          # None: plain GDN (the chunkwise kernels)
  interpret: bool
  config: KernelConfig
  final_state: bool = False   # also return the streams' states after the sequence
  offset: bool = False        # log-linear: positions continue an initial state's t_B
  level_streams: str = 'gdn'  # log-linear: 'gdn' (levels as GDN runs) or 'scan' (_mixer)
  gdn_config: KernelConfig | None = None   # log-linear 'gdn' streams: their GDN kernels' launch


def _gates_BHP(*gates_BPH):
  return tuple(jnp.moveaxis(x.astype(jnp.float32), 1, 2) for x in gates_BPH)


def _ut_launch(k_BPGK, heads, st):
  return chunkwise.launch(k_BPGK, heads, 16, None, st.chunk_size, st.config, st.interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ut_inverse(k_BPGK, g_BPH, beta_BPH, st):
  """T_BPHC = (I + A)^-1 of every chunk (float32; rows t, columns s of its chunk) through the
  chunkwise kernels, batch sliced below 2^31 elements; its vjp is chunkwise.ut_inverse_bwd."""
  _, P, _, K = k_BPGK.shape
  H = beta_BPH.shape[2]
  return in_row_batches(
      lambda k, g, b: chunkwise.ut_inverse(_ut_launch(k, H, st), k, g, b),
      (k_BPGK,) + _gates_BHP(g_BPH, beta_BPH), P * H * max(K, st.chunk_size),
      f'pallas UT transform (T={P}, heads={H})')


def _ut_inverse_fwd(k, g, beta, st):
  t = _ut_inverse(k, g, beta, st)
  return t, (k, g, beta, t)


def _ut_inverse_bwd(st, res, dt_BPHC):
  k, g, beta, t = res
  B, P, G, K = k.shape
  H = beta.shape[2]
  dk, dg, dbeta = in_row_batches(
      lambda k, g, b, t, dt: chunkwise.ut_inverse_bwd(_ut_launch(k, H, st), k, g, b, t, dt),
      (k,) + _gates_BHP(g, beta) + (t, dt_BPHC.astype(jnp.float32)),
      P * H * max(K, st.chunk_size), f'pallas UT transform (T={P}, heads={H})')
  dk = jnp.sum(dk.reshape(B, P, G, H // G, K), axis=3)
  return dk.astype(k.dtype), jnp.moveaxis(dg, 1, 2).astype(g.dtype), jnp.moveaxis(
      dbeta, 1, 2).astype(beta.dtype)


_ut_inverse.defvjp(_ut_inverse_fwd, _ut_inverse_bwd)


def _tb(t_BPHC, beta_BPH):
  """T_g diag(beta) of every chunk, tb_BNHTS (float32), from T_g as the UT kernels give it (rows
  t of each chunk along P, columns s last)."""
  B, P, H, C = t_BPHC.shape
  N = P // C
  beta_BNHC = jnp.moveaxis(beta_BPH.astype(jnp.float32).reshape(B, N, C, H), 2, 3)
  return jnp.moveaxis(t_BPHC.reshape(B, N, C, H, C), 3, 2) * beta_BNHC[..., None, :]


def _wy(k_BPGK, g_BPH, beta_BPH, st):
  """Per-chunk UT/WY transform (parallel over chunks): W_BPHK = T_g diag(beta e^G) K and
  tb_BPHC = T_g diag(beta) in XLA (fp32; U = tb V is formed in the kernel)."""
  B, P, _, K = k_BPGK.shape
  H = beta_BPH.shape[2]
  C = st.chunk_size
  N = P // C
  f32 = jnp.float32
  k_BNCHK = linear_recurrence.expand_groups(k_BPGK, H).reshape(B, N, C, H, K)
  g_BNHC = jnp.moveaxis(g_BPH.astype(f32).reshape(B, N, C, H), 2, 3)
  tb_BNHTS = _tb(_ut_inverse(k_BPGK, g_BPH, beta_BPH, st), beta_BPH)
  w = _ein('bnhts,bnhs,bnshk->bnthk', tb_BNHTS, jnp.exp(jnp.cumsum(g_BNHC, axis=-1)),
           k_BNCHK.astype(f32))
  return w.reshape(B, P, H, K), jnp.moveaxis(tb_BNHTS, 2, 3).reshape(B, P, H, C)


class _Packed(NamedTuple):
  """Per-token arrays of packed rows (padded to P): kernel inputs and the masks behind them."""
  pos_BP: jax.Array           # position inside the document, -1 at padding
  doc_BP: jax.Array
  read_BXP: jax.Array         # stream x read here (read weight rho = lam of its level x mask)
  wm_BXP: jax.Array           # stream x written here (and no reset after it in the chunk)
  keep_BXP: jax.Array         # no reset of stream x in this token's chunk


def _packed_masks(segment_ids_BT, P, levels, C, t0_B=None):
  """_Packed of the rows (hierarchy.level_stream_masks; resets inside a chunk as in
  linear_recurrence.chunked_recurrence: a token reads a stream only before the first reset of its
  chunk and writes it only after the last); t0_B: the first document's positions start there."""
  B, T = segment_ids_BT.shape
  lay = linear_recurrence.layout_of(segment_ids_BT, B, T, t0_B, P)
  if levels is None:          # plain GDN: one stream, reset at document starts
    real = lay.real_BT[None]
    reset, write, read = lay.start_BT[None], real, real
  else:
    streams = stream_levels(levels, C, P, True, t0_B is not None)[1]
    reset, write, read = hierarchy.level_stream_masks(lay.pos_BT, lay.real_BT, streams)
  return _stream_masks(reset, write, read, jnp.where(lay.real_BT, lay.pos_BT, -1), lay.doc_BT, C)


def _stream_masks(reset_XBP, write_XBP, read_XBP, pos_BP, doc_BP, C):
  """_Packed of rows whose X streams reset, are written and are read where the [X, B, P] masks
  say, by chunks of C: a token reads a stream only before the first reset of its chunk and writes
  it only after the last; pos_BP (-1 at padding) and doc_BP give the pairs of one document."""
  P = pos_BP.shape[-1]
  chunks = lambda x: x.reshape(x.shape[:-1] + (P // C, C))
  rc = jnp.cumsum(chunks(reset_XBP).astype(jnp.int32), axis=-1)
  flat = lambda x: x.reshape(x.shape[:-2] + (P,))
  to_B = lambda x: jnp.moveaxis(flat(x).astype(jnp.float32), 0, 1)
  return _Packed(pos_BP, doc_BP,
                 to_B(chunks(read_XBP) & (rc == 0)), to_B(chunks(write_XBP) & (rc == rc[..., -1:])),
                 to_B(jnp.broadcast_to(rc[..., -1:] == 0, rc.shape)))


def _rho(lam_BPHL, packed, st):
  """rho_BHXP = lam of each stream's level x its read mask."""
  read_BHXP = packed.read_BXP[:, None]
  P = lam_BPHL.shape[1]
  streams = list(stream_levels(st.levels, st.chunk_size, P, True, st.offset)[1])
  lam_BHXP = jnp.transpose(lam_BPHL[..., streams].astype(jnp.float32), (0, 2, 3, 1))
  return lam_BHXP * read_BHXP


def _intra(q, k, v, g, lam, tb_BNHTS, packed, st):
  """(intra_BPHV, a_BNHTS) in XLA (padded arrays, fp32): the in-chunk output (Aeff o M) V with
  Aeff = a T_g diag(beta), a = tril(Q K^T o D) (returned: the inter-chunk queries reuse it). M:
  aligned, the levels inside a chunk; packed, pairs of one document weighted by the level of their
  document positions."""
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  N = P // C
  f32 = jnp.float32
  G_BNHC = jnp.moveaxis(jnp.cumsum(g.astype(f32).reshape(B, N, C, H), axis=2), 2, 3)
  causal = jnp.tril(jnp.ones((C, C), bool))
  a_BNHTS = _ein('bnthk,bnshk->bnhts', _chunk_heads(q, H, C), _chunk_heads(k, H, C)) * jnp.exp(
      jnp.where(causal, G_BNHC[..., :, None] - G_BNHC[..., None, :], -jnp.inf))
  aeff_BNHTS = _ein('bnhts,bnhsu->bnhtu', a_BNHTS, tb_BNHTS)     # lower triangular
  intra_levels = stream_levels(st.levels, C, P, packed is not None, st.offset)[0]
  if packed is None:
    idx = jnp.arange(C)
    lvl_BNTS = jnp.broadcast_to(hierarchy.level_index(idx[:, None], idx[None, :]), (B, N, C, C))
  else:
    lay = hierarchy.DocumentLayout(packed.pos_BP >= 0, None, packed.doc_BP,
                                   jnp.maximum(packed.pos_BP, 0), None)
    lvl_BNTS = linear_recurrence.chunk_pairs(     # -1: not a causal pair of one document
        lambda pos, doc, real: hierarchy.pair_levels(pos, doc, real, C), lay, C)
  lam_BNHCL = jnp.moveaxis(lam[..., :intra_levels].astype(f32).reshape(B, N, C, H, -1), 3, 2)
  aeff_BNHTS = aeff_BNHTS * _ein('bnhtl,bntsl->bnhts', lam_BNHCL,
                                 jax.nn.one_hot(lvl_BNTS, intra_levels, dtype=f32))
  intra = _ein('bnhts,bnshv->bnthv', aeff_BNHTS, v.astype(f32).reshape(B, N, C, H, V))
  return intra.reshape(B, P, H, V), a_BNHTS


def _prep(q, k, v, g, beta, lam, packed, st):
  """The parallel per-chunk part in XLA (padded arrays, fp32), differentiated for the backward:
  the intra-chunk output (_intra) and the inter-chunk operands qt = e^G q - (q k^T o D) W,
  k2 = e^{G_C - G} k, W, U = T_g diag(beta) V and tb = T_g diag(beta) (per head, [B, P, H, *])."""
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  N = P // C
  f32 = jnp.float32
  w_BPHK, tb_BPHC = _wy(k, g, beta, st)
  tb_BNHTS = jnp.moveaxis(tb_BPHC.reshape(B, N, C, H, C), 3, 2)
  intra, a_BNHTS = _intra(q, k, v, g, lam, tb_BNHTS, packed, st)
  q_BNCHK, k_BNCHK = _chunk_heads(q, H, C), _chunk_heads(k, H, C)
  G_BNCH = jnp.cumsum(g.astype(f32).reshape(B, N, C, H), axis=2)
  w_BNCHK = w_BPHK.reshape(B, N, C, H, K)
  qt = q_BNCHK * jnp.exp(G_BNCH)[..., None] - _ein('bnhts,bnshk->bnthk', a_BNHTS, w_BNCHK)
  k2 = k_BNCHK * jnp.exp(G_BNCH[:, :, -1:] - G_BNCH)[..., None]
  u = _ein('bnhts,bnshv->bnthv', tb_BNHTS, v.astype(f32).reshape(B, N, C, H, V))
  flat = lambda x: x.reshape((B, P) + x.shape[3:])
  return intra, flat(qt), flat(k2), w_BPHK, flat(u), tb_BPHC


def _scan_forward(q, k, v, g, beta, lam, s0, packed, st, with_states):
  """gdn_scan over batch slices: (o, states or None, final or None); s0: initial stream states
  [B, H, X, K, V] or None."""
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  w_BPHK, tb_BPHC = _wy(k, g, beta, st)
  g_BHP, lam_BHLP = gate_layouts(g, lam)
  masks = None if packed is None else (
      packed.pos_BP, packed.doc_BP, _rho(lam, packed, st), packed.wm_BXP,
      packed.keep_BXP)
  cfg = st.config
  fn = functools.partial(gdn_scan, chunk_size=C, levels=st.levels, all_levels=st.offset,
                         with_states=with_states, with_final=st.final_state, out_dtype=v.dtype,
                         block_v=cfg.block_v, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                         interpret=st.interpret)
  X = len(stream_levels(st.levels, C, P, packed is not None, st.offset)[1])
  # the stored states (backward only) are the largest array: X x K x V floats per chunk and head
  per_row = P * H * max(K, V, C, lam.shape[-1], X,
                       X * K * V // C if with_states else 0)
  outs = in_row_batches(lambda *a: fn(*a[:7], a[8:] if packed is not None else None, a[7]),
                        (q, k, w_BPHK, tb_BPHC, v, g_BHP, lam_BHLP, s0) + (masks or ()),
                        per_row, f'pallas GDN kernel (T={P}, heads={H})')
  outs = list(outs) if isinstance(outs, tuple) else [outs]
  o = outs.pop(0)
  states = outs.pop(0) if with_states and X > 0 else None
  return o, states, (outs.pop(0) if st.final_state else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _mixer(q_BPGK, k_BPGK, v_BPHV, g_BPH, beta_BPH, lam_BPHL, s0_BHXKV, packed, st):
  """Padded inputs (P = whole chunks, power-of-two feature axes, padding zeroed, q scaled) and
  initial stream states (or None) -> (o_BPHV, final stream states or None); packed: a _Packed or
  None (aligned). Backward: gdn_scan_bwd and the vjp of _prep (module docstring)."""
  o, _, final = _scan_forward(q_BPGK, k_BPGK, v_BPHV, g_BPH, beta_BPH, lam_BPHL, s0_BHXKV, packed,
                              st, False)
  return o, final


def _mixer_fwd(q, k, v, g, beta, lam, s0, packed, st):
  o, states, final = _scan_forward(q, k, v, g, beta, lam, s0, packed, st, True)
  return (o, final), (q, k, v, g, beta, lam, s0 is not None, packed, states)


def _mixer_bwd(st, res, cotangents):
  q, k, v, g, beta, lam, with_s0, packed, states = res
  do_BPHV, dfinal = cotangents
  with_state_grads = with_s0 or st.final_state
  if with_state_grads and dfinal is None:
    X, K, V = states.shape[2], q.shape[-1], v.shape[-1]
    dfinal = jnp.zeros(states.shape[:2] + (X, K, V), jnp.float32)
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C = st.chunk_size
  outs, vjp = jax.vjp(lambda *a: _prep(*a, packed, st), q, k, v, g, beta, lam)
  _, qt, k2, w, u, tb = outs
  do = do_BPHV.astype(jnp.float32)
  f32 = jnp.float32
  dg_BPH = jnp.zeros((B, P, H), f32)
  dlam = jnp.zeros(lam.shape, f32)
  dqt, dk2, dw, du, dtb = (jnp.zeros_like(x) for x in (qt, k2, w, u, tb))
  dv_inter = jnp.zeros(v.shape, f32)
  ds0 = None
  if states is not None:
    g_BHP, lam_BHLP = gate_layouts(g, lam)
    cfg = st.config
    fn = functools.partial(gdn_scan_bwd, chunk_size=C, levels=st.levels, all_levels=st.offset,
                           mm_dtype=q.dtype,
                           block_v=cfg.block_v, num_warps=cfg.num_warps,
                           num_stages=cfg.num_stages, interpret=st.interpret)
    J = V // min(cfg.block_v, V)
    X = states.shape[2]
    per_row = P * H * max(J * K, J * C, V, J * X, X * K * V // C)
    with_dinit = (0,) if with_state_grads else ()
    name = f'pallas GDN backward kernel (T={P}, heads={H})'
    if packed is None:
      outs = in_row_batches(lambda *a: fn(*a[:8], None, None, None, a[8]),
                            (qt, k2, w, u, do, g_BHP, states, lam_BHLP, dfinal), per_row, name,
                            out_axes=(1, 1, 1, 0, 1, 1) + with_dinit)
      du = outs[3]
      dg_part, drho = outs[4], outs[5]
    else:
      masks = (packed.pos_BP, packed.doc_BP, _rho(lam, packed, st), packed.wm_BXP,
               packed.keep_BXP)
      outs = in_row_batches(
          lambda *a: fn(*a[:7], None, a[7:12], a[12], a[13], a[14]),
          (qt, k2, w, None, do, g_BHP, states) + masks + (tb, v, dfinal), per_row, name,
          out_axes=(1, 1, 1, 1, 0, 1, 1) + with_dinit)
      dtb, dv_inter = jnp.sum(outs[3], axis=0), outs[4]
      dg_part, drho = outs[5], outs[6]
    ds0 = outs[-1] if with_s0 else None
    dqt, dk2, dw = (jnp.sum(x, axis=0) for x in outs[:3])
    dg_BPH = jnp.moveaxis(jnp.sum(dg_part, axis=0), 1, 2)
    drho_BPHX = jnp.transpose(jnp.sum(drho, axis=0), (0, 3, 1, 2))
    if packed is None:
      lo = C.bit_length()
      dlam = dlam.at[..., lo:lo + X].set(drho_BPHX)
    else:
      streams = list(stream_levels(st.levels, C, P, True, st.offset)[1])
      read_BPX = jnp.moveaxis(packed.read_BXP, 1, 2)
      dlam = dlam.at[..., streams].set(drho_BPHX * read_BPX[:, :, None])
  dq, dk, dv, dg, dbeta, dlam_intra = vjp((do, dqt, dk2, dw, du, dtb))
  dv = (dv.astype(f32) + dv_inter).astype(v.dtype)
  dg = (dg + dg_BPH).astype(g.dtype)
  dlam = (dlam_intra + dlam).astype(lam.dtype)
  none = None if packed is None else _Packed(*(None,) * len(packed))
  return dq, dk, dv, dg, dbeta, dlam, ds0, none


_mixer.defvjp(_mixer_fwd, _mixer_bwd)


def _intra_of_t(q, k, v, g, beta, lam, t_BPHC, st):
  """_intra of aligned rows from the chunks' T_g (float32, as ut_transform gives it)."""
  return _intra(q, k, v, g, lam, _tb(t_BPHC, beta), None, st)[0]


class _Streams(NamedTuple):
  """Level streams as rows of plain GDN, stream-major [X B, P] (hierarchy.level_stream_masks of
  a DocumentLayout): the "documents" of stream l are the 2^l blocks of document positions, so
  GDN's packed kernels reset it where one starts; it is written (its values kept) by the first
  half of each block and read, with lam of its level, by the second half."""
  levels: list
  packed: _Packed
  write_XBP: jax.Array
  read_XBP: jax.Array

  @classmethod
  def of(cls, lay, levels, C):
    """The streams of `levels` (None when there are none) over layout `lay`, chunks of C."""
    if not levels:
      return None
    reset, write, read = hierarchy.level_stream_masks(lay.pos_BT, lay.real_BT, levels)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731   [X, B, P] -> [X B, P]
    real = flat(jnp.broadcast_to(lay.real_BT, reset.shape))
    pos = flat(jnp.broadcast_to(lay.pos_BT, reset.shape))
    packed = _stream_masks(flat(reset)[None], real[None], real[None], jnp.where(real, pos, -1),
                           jnp.cumsum(flat(reset), axis=-1, dtype=jnp.int32), C)
    return cls(list(levels), packed, write, read)

  def rows(self, x):
    """x [B, ...] repeated for every stream: [X B, ...]."""
    return jnp.broadcast_to(x, (len(self.levels),) + x.shape).reshape((-1,) + x.shape[1:])

  def written(self, x_BPHV):
    """Each stream's values, x where it is written and 0 elsewhere: [X B, P, H, V]."""
    return (self.write_XBP[..., None, None].astype(x_BPHV.dtype) * x_BPHV).reshape(
        (-1,) + x_BPHV.shape[1:])

  def rho(self, lam_BPHL):
    """[X, B, P, H]: each stream's read weight, lam of its level where it is read."""
    return self.read_XBP[..., None] * jnp.moveaxis(
        lam_BPHL[..., self.levels].astype(jnp.float32), 3, 0)


def _aligned_streams(st, B, P):
  """_Streams of rows of one document from position 0: the levels above the chunk, whose blocks
  and block halves start on chunk starts (2^(l-1) >= C)."""
  levels = stream_levels(st.levels, st.chunk_size, P)[1]
  return _Streams.of(linear_recurrence.layout_of(None, B, P), levels, st.chunk_size)


def _every_level_streams(q, k, v, g, beta, lam, s0_BHXKV, segment_ids_BT, t0_B, st):
  """Log-linear GDN of packed rows or with states (padded inputs as _mixer's; s0_BHXKV: initial
  stream states of levels 1 .., or None): every level >= 1 as a plain GDN run on GDN's kernels
  (_gdn_mixer on _Streams rows), level 0 (the token itself) in XLA. A stream's blocks follow the
  document positions, so they can start inside a chunk; its output holds its level's pairs
  inside a chunk as well as across chunks (no pair of another level shares one of its blocks
  with a written source), so nothing else is added but level 0.
  Returns (o_BPHV, final stream states [B, H, X, K, V] or None)."""
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  f32 = jnp.float32
  heads = lambda x: linear_recurrence.expand_groups(x, H).astype(f32)  # noqa: E731
  qk_BPH = jnp.sum(heads(q) * heads(k), axis=-1)
  o = (lam[..., 0] * beta * qk_BPH)[..., None].astype(f32) * v.astype(f32)   # level 0
  lay = linear_recurrence.layout_of(segment_ids_BT, B, segment_ids_BT.shape[1], t0_B, P)
  streams = _Streams.of(lay, stream_levels(st.levels, st.chunk_size, P, True, st.offset)[1],
                        st.chunk_size)
  if streams is None:
    return o, jnp.zeros((B, H, 0, K, V), f32) if st.final_state else None
  X = len(streams.levels)
  s0 = None if s0_BHXKV is None else jnp.moveaxis(s0_BHXKV, 2, 0).reshape(X * B, H, 1, K, V)
  o_s, final = _gdn_mixer(streams.rows(q), streams.rows(k), streams.written(v), streams.rows(g),
                          streams.rows(beta), s0, streams.packed,
                          st._replace(levels=None, config=st.gdn_config, offset=False))
  o = o + _ein('xbph,xbphv->bphv', streams.rho(lam), o_s.reshape(X, B, P, H, V))
  if final is not None:
    final = jnp.moveaxis(final.reshape(X, B, H, K, V), 0, 2)
  return o, final


def _gdn_kernel_rows(fn, arrays, masks, st, H, K, V, name, out_axes=0):
  """fn(masks, *arrays) of GDN's kernels over batch slices (axis 0 of every array; masks: a
  chunkwise.Masks or None) so that no array reaches 2^31 elements (the largest: the per-chunk
  states, K x V per chunk and head). arrays[0]: [B, P, ...]."""
  P, C = arrays[0].shape[1], st.chunk_size
  n = len(chunkwise.Masks._fields)
  return in_row_batches(
      lambda *a: fn(None if masks is None else chunkwise.Masks(*a[:n]), *a[n:]),
      (tuple(masks) if masks else (None,) * n) + tuple(arrays), P * H * max(K, V, C, K * V // C),
      f'{name} (T={P}, heads={H})', out_axes)


def _streams_forward(q, k, v, g, beta, lam, st):
  """(o, residuals): rows of one document (padded inputs as _mixer's). One UT transform serves
  the in-chunk part (_intra_of_t) and every level stream: a stream's U is U times its write flag,
  since the flag is constant over a chunk (U = T_g diag(beta) V per chunk)."""
  B, P, _, K = q.shape
  H, V = v.shape[2:]
  C, cfg = st.chunk_size, st.gdn_config
  g_BHP, beta_BHP = _gates_BHP(g, beta)
  w, u, t = in_row_batches(
      lambda k, v, g, b: chunkwise.ut_transform(
          chunkwise.launch(k, H, V, None, C, cfg, st.interpret), k, v, g, b),
      (k, v, g_BHP, beta_BHP), P * H * max(K, V, C), f'pallas UT transform (T={P}, heads={H})')
  o = _intra_of_t(q, k, v, g, beta, lam, t, st)
  streams = _aligned_streams(st, B, P)
  if streams is None:
    return o, (t, None, None, None, None)
  rep = streams.rows

  def run(masks, q, k, w, u, g):
    L = chunkwise.launch(q, H, V, masks, C, cfg, st.interpret)
    h, vn = chunkwise.state_scan(L, k, w, u, g)
    return h, vn, chunkwise.output(L, q, k, g, h, vn, v.dtype)
  h, vn, o_s = _gdn_kernel_rows(run, (rep(q), rep(k), rep(w), streams.written(u), rep(g_BHP)),
                                _gdn_masks(streams.packed), st, H, K, V,
                                'pallas GDN level streams')
  o = o + _ein('xbph,xbphv->bphv', streams.rho(lam), o_s.reshape(-1, B, P, H, V))
  return o, (t, w, h, vn, o_s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _streams_mixer(q, k, v, g, beta, lam, st):
  """Log-linear GDN of aligned rows (padded inputs as _mixer's; no packed documents, no states)
  on GDN's kernels: the levels inside a chunk in XLA (_intra), and each level stream above as a
  plain GDN run on packed rows (_aligned_streams; all streams in one launch, stream-major on
  the batch axis) whose values are zero outside its blocks' first halves, its output read with
  lam of its level in the second halves. The states of a stream evolve by the transitions of
  every token, as log-linear GDN's levels do (docs/algorithms/loglinear.md). Every part shares
  one UT transform, and in the backward one transpose of the UT inverse (ut_inverse_bwd) of the
  sum of their dT."""
  return _streams_forward(q, k, v, g, beta, lam, st)[0]


def _streams_mixer_fwd(q, k, v, g, beta, lam, st):
  o, residuals = _streams_forward(q, k, v, g, beta, lam, st)
  return o, (q, k, v, g, beta, lam) + residuals


def _streams_mixer_bwd(st, res, do_BPHV):
  q, k, v, g, beta, lam, t, w, h, vn, o_s = res
  B, P, G, K = q.shape
  H, V = v.shape[2:]
  C, cfg = st.chunk_size, st.gdn_config
  f32 = jnp.float32
  _, intra_vjp = jax.vjp(lambda *a: _intra_of_t(*a, st), q, k, v, g, beta, lam, t)
  dq, dk, dv, dg, dbeta, dlam, dt = (x.astype(f32) for x in intra_vjp(do_BPHV.astype(f32)))
  g_BHP, beta_BHP = _gates_BHP(g, beta)
  streams = _aligned_streams(st, B, P)
  if streams is not None:
    rep = streams.rows
    rho_XBPH = streams.rho(lam)
    drho_XBPH = _ein('bphv,xbphv->xbph', do_BPHV, o_s.reshape(-1, B, P, H, V))
    dlam = dlam.at[..., streams.levels].add(
        jnp.moveaxis(drho_XBPH * streams.read_XBP[..., None], 0, 3))
    do_s = (rho_XBPH[..., None] * do_BPHV.astype(f32)).astype(v.dtype).reshape(-1, P, H, V)

    def run(masks, q, k, v, g, beta, w, t, h, vn, do):
      L = chunkwise.launch(q, H, V, masks, C, cfg, st.interpret)
      dvl, dq, dk_out, dg_out = chunkwise.output_bwd(L, q, k, g, h, vn, do)
      dh, dvn = chunkwise.state_scan_bwd(L, q, k, w, g, do, dvl)
      return (dq,) + chunkwise.chunk_bwd(L, k, v, g, beta, t, h, dh, vn, dvn, dk_out, dg_out,
                                         with_inverse=False)
    outs = _gdn_kernel_rows(run, (rep(q), rep(k), streams.written(v), rep(g_BHP), rep(beta_BHP),
                                 rep(w), rep(t), h, vn, do_s), _gdn_masks(streams.packed), st, H,
                            K, V, 'pallas GDN level streams backward')
    total = lambda x: jnp.sum(x.reshape((-1, B) + x.shape[1:]).astype(f32), axis=0)  # noqa: E731
    dq_s, dk_s, dv_s, dg_s, dbeta_s, dt_s = outs
    group = lambda x: jnp.sum(x.reshape(B, P, G, H // G, K), axis=3)  # noqa: E731
    dq = dq + group(total(dq_s))
    dk = dk + group(total(dk_s))
    dv = dv + _ein('xbp,xbphv->bphv', streams.write_XBP.astype(f32),
                   dv_s.reshape(-1, B, P, H, V))
    dg = dg + jnp.moveaxis(total(dg_s), 1, 2)
    dbeta = dbeta + jnp.moveaxis(total(dbeta_s), 1, 2)
    dt = dt + total(dt_s)
  dk_u, dg_u, dbeta_u = in_row_batches(
      lambda k, g, b, t, dt: chunkwise.ut_inverse_bwd(_ut_launch(k, H, st), k, g, b, t, dt),
      (k, g_BHP, beta_BHP, t, dt), P * H * max(K, C), f'pallas UT transform (T={P}, heads={H})')
  dk = dk + jnp.sum(dk_u.reshape(B, P, G, H // G, K), axis=3)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          (dg + jnp.moveaxis(dg_u, 1, 2)).astype(g.dtype),
          (dbeta + jnp.moveaxis(dbeta_u, 1, 2)).astype(beta.dtype), dlam.astype(lam.dtype))


_streams_mixer.defvjp(_streams_mixer_fwd, _streams_mixer_bwd)


def _gdn_masks(packed):
  """chunkwise.Masks of plain GDN's one stream (None for aligned rows)."""
  if packed is None:
    return None
  return chunkwise.Masks(packed.pos_BP, packed.doc_BP, packed.read_BXP[:, 0],
                         packed.wm_BXP[:, 0], packed.keep_BXP[:, 0])


def _gdn_run(fn, q, k, v, g_BHP, beta_BHP, packed, extra, st):
  """fn(q, k, v, g_BHP, beta_BHP, masks, *extra) over batch slices (_gdn_kernel_rows)."""
  H, V = v.shape[2:]
  return _gdn_kernel_rows(lambda m, *a: fn(*a[:5], m, *a[5:]),
                          (q, k, v, g_BHP, beta_BHP) + tuple(extra), _gdn_masks(packed), st, H,
                          q.shape[3], V, 'pallas GDN kernels')


def _gdn_forward(q, k, v, g, beta, s0, packed, st, with_residuals):
  """chunkwise.gdn_forward over batch slices: (o, final state [B, H, 1, K, V] or None, residuals
  or None)."""
  g_BHP, beta_BHP = _gates_BHP(g, beta)
  fn = functools.partial(chunkwise.gdn_forward, chunk_size=st.chunk_size, cfg=st.config,
                         with_final=st.final_state, with_residuals=with_residuals,
                         interpret=st.interpret)
  init = None if s0 is None else s0[:, :, 0]
  outs = _gdn_run(lambda q, k, v, g, b, m, s: fn(q, k, v, g, b, m, s), q, k, v, g_BHP, beta_BHP,
                  packed, (init,), st)
  outs = list(outs) if isinstance(outs, tuple) else [outs]
  o = outs.pop(0)
  final = outs.pop(0)[:, :, None] if st.final_state else None
  return o, final, (tuple(outs) if with_residuals else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _gdn_mixer(q_BPGK, k_BPGK, v_BPHV, g_BPH, beta_BPH, s0_BHXKV, packed, st):
  """Plain GDN through the chunkwise kernels (padded inputs as _mixer's, one stream: X = 1)."""
  o, final, _ = _gdn_forward(q_BPGK, k_BPGK, v_BPHV, g_BPH, beta_BPH, s0_BHXKV, packed, st,
                             False)
  return o, final


def _gdn_mixer_fwd(q, k, v, g, beta, s0, packed, st):
  o, final, residuals = _gdn_forward(q, k, v, g, beta, s0, packed, st, True)
  return (o, final), (q, k, v, g, beta, s0 is not None, packed, residuals)


def _gdn_mixer_bwd(st, res, cotangents):
  q, k, v, g, beta, with_s0, packed, residuals = res
  do, dfinal = cotangents
  B, P, G, K = q.shape
  H, V = v.shape[2:]
  with_state_grads = with_s0 or st.final_state
  if with_state_grads:
    dfinal = (jnp.zeros((B, H, K, V), jnp.float32) if dfinal is None
              else dfinal[:, :, 0].astype(jnp.float32))
  else:
    dfinal = None
  g_BHP, beta_BHP = _gates_BHP(g, beta)
  # dq, dk, dv leave the kernels in the inputs' dtype unless a group sum (GQA) follows
  same = G == H and q.dtype == k.dtype == v.dtype
  fn = functools.partial(chunkwise.gdn_backward, chunk_size=st.chunk_size, cfg=st.config,
                         grad_dtype=v.dtype if same else jnp.float32, interpret=st.interpret)
  outs = _gdn_run(lambda q, k, v, g, b, m, do, df, *r: fn(q, k, v, g, b, m, r, do, df),
                  q, k, v, g_BHP, beta_BHP, packed, (do.astype(v.dtype), dfinal) + residuals, st)
  dq, dk, dv, dg, dbeta = outs[:5]
  group = lambda x: jnp.sum(x.reshape(B, P, G, H // G, K), axis=3)
  ds0 = outs[5][:, :, None] if with_s0 else None
  none = None if packed is None else _Packed(*(None,) * len(packed))
  return (group(dq).astype(q.dtype), group(dk).astype(k.dtype), dv.astype(v.dtype),
          dg.astype(g.dtype), dbeta.astype(beta.dtype), ds0, none)


_gdn_mixer.defvjp(_gdn_mixer_fwd, _gdn_mixer_bwd)


def _kernel_path(q, k, v, g, beta, lam, s0_BHXKV, t0_B, segment_ids_BT, packed, st):
  """Pads to whole chunks and power-of-two feature axes, zeroes the tokens segment_ids_BT marks
  as padding (None: none), runs the kernels (packed: with the document masks of segment_ids_BT,
  positions from t0_B). s0_BHXKV: initial stream states or None. Returns (o_BTHV, final stream
  states [B, H, X, K, V] or None)."""
  T, K = q.shape[1], q.shape[3]
  V = v.shape[3]
  Kp, Vp = pow2(K), pow2(V)
  (q, k, v, g, beta, lam), _ = padded_inputs(
      [q * st.scale, k, v, g, beta, lam], segment_ids_BT, st.chunk_size,
      [Kp, Kp, Vp, None, None, None])
  takes_masks = st.levels is None or st.level_streams == 'scan'   # GDN's, the level scans
  masks = (_packed_masks(segment_ids_BT, g.shape[1], st.levels, st.chunk_size, t0_B)
           if packed and takes_masks else None)
  s0 = None if s0_BHXKV is None else jnp.pad(
      s0_BHXKV.astype(jnp.float32), ((0, 0),) * 3 + ((0, Kp - K), (0, Vp - V)))
  if st.levels is None:
    o_BPHV, final = _gdn_mixer(q, k, v, g, beta, s0, masks, st)
  elif st.level_streams == 'gdn' and not packed:     # _run makes rows with states packed
    o_BPHV, final = _streams_mixer(q, k, v, g, beta, lam, st).astype(v.dtype), None
  elif st.level_streams == 'gdn':
    o_BPHV, final = _every_level_streams(q, k, v, g, beta, lam, s0, segment_ids_BT, t0_B, st)
    o_BPHV = o_BPHV.astype(v.dtype)
  else:
    o_BPHV, final = _mixer(q, k, v, g, beta, lam, s0, masks, st)
  return o_BPHV[:, :T, :, :V], None if final is None else final[..., :K, :V]


@functools.partial(jax.jit, static_argnames=('st',))
def _run(q, k, v, g, beta, lam, s0_BHXKV, t0_B, segment_ids_BT, st):
  """(o_BTHV, final stream states or None) of the kernels. Log-linear states take the packed
  kernels, whose streams cover every level >= 1 (the aligned ones keep the levels inside a chunk
  in no state), and with an initial state (st.offset) positions from t0_B."""
  every_level = st.levels is not None and (st.final_state or st.offset)
  if every_level and segment_ids_BT is None:
    segment_ids_BT = hierarchy.dense_segment_ids(*v.shape[:2])
  path = functools.partial(_kernel_path, q, k, v, g, beta, lam, s0_BHXKV, t0_B)
  if segment_ids_BT is None:
    return path(None, False, st)

  def zeroed(packed):
    """The kernels with the padding tokens of segment_ids_BT zeroed (inputs and output)."""
    o, final = path(segment_ids_BT, packed, st)
    (o,) = linear_recurrence.sanitize(segment_ids_BT > 0, o)
    return o, final
  if every_level:
    return zeroed(True)
  aligned_rows = one_document_per_row(segment_ids_BT)
  if st.levels is None:
    # GDN: rows that are each one document without padding (what the trainer passes for unpacked
    # data) take the aligned kernels on the inputs as given: no token to zero, so no pass over q,
    # k, v and the output (and their gradients) to do it. Rows with padding, and packed rows, take
    # the packed kernels (the same kernels with document masks), padding zeroed.
    aligned_rows &= jnp.all(segment_ids_BT > 0)
    aligned = lambda: path(None, False, st)  # noqa: E731
  else:
    # log-linear GDN's packed kernels run a stream per level: rows of one document then padding
    # keep the aligned kernels (padding zeroed), packed rows take the packed ones.
    aligned = lambda: zeroed(False)  # noqa: E731
  return lax.cond(aligned_rows, aligned, lambda: zeroed(True))


def gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, *, initial_state_BHKV=None,
                segment_ids_BT=None, chunk_size=64, scale=1.0, return_final_state=False,
                interpret=False, config=None):
  """Gated DeltaNet (lloglin.ops.gdn.gdn_chunked) through the Pallas kernels, initial and
  final states included; chunk_size < 16 runs the XLA form (module docstring).
  """
  checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                          beta_BTH=beta_BTH, segment_ids_BT=segment_ids_BT,
                          initial_state_BHKV=initial_state_BHKV, chunk_size=chunk_size)
  if chunk_size < 16:
    return ops_gdn.gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH,
                             initial_state_BHKV=initial_state_BHKV, segment_ids_BT=segment_ids_BT,
                             chunk_size=chunk_size, scale=scale,
                             return_final_state=return_final_state)
  B, _, H, V = v_BTHV.shape
  config = launch_config(config, GDN_CONFIG, B * H, V, ('triton', 'mosaic'))
  dtypes = {jnp.dtype(x.dtype).name for x in (q_BTGK, k_BTGK, v_BTHV)}
  if len(dtypes) > 1:   # the Mosaic GPU kernels read q, k and v as tiles of one 16-bit dtype
    if config.backend == 'mosaic':
      raise ValueError(f"gdn_chunked: config.backend='mosaic' takes q, k and v of one dtype; got "
                       f"{sorted(dtypes)}")
    config = config._replace(backend='triton')
  st = _Static(chunk_size, float(scale), None, interpret, config, bool(return_final_state))
  s0 = None if initial_state_BHKV is None else initial_state_BHKV[:, :, None]
  o, final = _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, None, s0, None, segment_ids_BT, st)
  return (o, final[:, :, 0]) if return_final_state else o




def loglinear_gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *, initial_state=None,
                          segment_ids_BT=None, chunk_size=64, scale=1.0, return_final_state=False,
                          interpret=False, config=None, level_streams='gdn'):
  """Log-linear Gated DeltaNet (lloglin.ops.loglinear.loglinear_gdn_chunked) through the Pallas
  kernels, initial and final FenwickStates included (the packed kernels: a stream per level,
  positions continuing the initial state's t_B). chunk_size < 16 and T > 2^(L-1) run the XLA
  form (module docstring).

  level_streams: 'gdn' (default) runs the levels as plain GDN on GDN's kernels (any backend;
  rows of one document: the levels above the chunk, `_streams_mixer`; packed rows and states:
  every level >= 1, `_every_level_streams`); 'scan' on kernel.py's level-stream scans (Triton
  only), kept to time against.
  """
  checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                          beta_BTH=beta_BTH, lam_BTHL=lam_BTHL, segment_ids_BT=segment_ids_BT,
                          initial_state=initial_state, chunk_size=chunk_size)
  T, L = v_BTHV.shape[1], lam_BTHL.shape[-1]
  if chunk_size < 16 or T > hierarchy.capacity(L):
    return ops_loglinear.loglinear_gdn_chunked(
        q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, initial_state=initial_state,
        segment_ids_BT=segment_ids_BT, chunk_size=chunk_size, scale=scale,
        return_final_state=return_final_state)
  if level_streams not in ('gdn', 'scan'):
    raise ValueError(f"loglinear_gdn_chunked: level_streams={level_streams!r}; expected 'gdn' or "
                     "'scan'")
  B, _, H, V = v_BTHV.shape
  if level_streams == 'scan' and config is not None and config.backend == 'mosaic':
    raise ValueError("loglinear_gdn_chunked: config.backend='mosaic' needs level_streams='gdn' "
                     "(the level-stream scans have no Mosaic GPU form)")
  P = -(-T // chunk_size) * chunk_size
  streams = len(stream_levels(L, chunk_size, P)[1])
  gdn_config = launch_config(config, GDN_CONFIG, max(streams, 1) * B * H, V, ('triton', 'mosaic'))
  if len({jnp.dtype(x.dtype).name for x in (q_BTGK, k_BTGK, v_BTHV)}) > 1:
    gdn_config = gdn_config._replace(backend='triton')   # as gdn_chunked
  # level_streams='scan' (and the UT inverse's transpose): Triton only
  scan_config = launch_config(None if config is None else config._replace(backend='triton'),
                              LOGLINEAR_GDN_CONFIG, B * H, V)
  st = _Static(chunk_size, float(scale), L, interpret, scan_config, bool(return_final_state),
               initial_state is not None, level_streams, gdn_config)
  s0 = t0_B = None
  if initial_state is not None:   # the streams after position t0 - 1; level 0 is never read
    t0_B = jnp.asarray(initial_state.t_B, jnp.int32)
    s0 = jnp.moveaxis(hierarchy.fenwick_to_level_streams(initial_state.S_BHLKV, t0_B)[1:], 0, 2)
  o, streams_BHXKV = _run(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, s0, t0_B,
                          segment_ids_BT, st)
  if t0_B is None and not return_final_state:
    return o
  lay = linear_recurrence.layout_of(segment_ids_BT, B, T, t0_B)
  state = (_fenwick_state(streams_BHXKV, k_BTGK, v_BTHV, beta_BTH, lay, L)
           if return_final_state else None)
  o, state = ops_loglinear.nan_past_capacity(o, state, lay, L)   # positions past the levels
  return (o, state) if return_final_state else o


def _fenwick_state(streams_BHXKV, k_BTGK, v_BTHV, beta_BTH, lay, levels):
  """The FenwickState after the sequence from the packed kernels' final streams (levels 1 ..
  X): level 0's stream, reset and written at every token, holds beta k v^T of the last token;
  levels above X are empty (hierarchy.level_streams_to_fenwick, as the XLA form)."""
  B, T, H, _ = v_BTHV.shape
  last_B = T - 1 - jnp.argmax(lay.real_BT[:, ::-1], axis=1)     # 0 for a row of padding only
  pick = lambda x: jnp.take_along_axis(x, last_B.reshape((B, 1) + (1,) * (x.ndim - 2)), 1)[:, 0]
  real_B = jnp.any(lay.real_BT, axis=1)
  k_BHK = pick(linear_recurrence.expand_groups(k_BTGK, H)).astype(jnp.float32)
  v_BHV = pick(v_BTHV).astype(jnp.float32)
  beta_BH = jnp.where(real_B[:, None], pick(beta_BTH).astype(jnp.float32), 0)
  level0_BHKV = linear_recurrence.outer_write(k_BHK, v_BHV, beta_BH, jnp.float32)
  X = streams_BHXKV.shape[2]
  S_LBHKV = jnp.concatenate([level0_BHKV[None], jnp.moveaxis(streams_BHXKV, 2, 0),
                             jnp.zeros((levels - 1 - X,) + level0_BHKV.shape, jnp.float32)])
  return hierarchy.FenwickState(hierarchy.level_streams_to_fenwick(S_LBHKV, lay.count_B),
                                lay.count_B)
