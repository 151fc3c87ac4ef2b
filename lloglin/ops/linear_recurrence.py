"""The linear-recurrence machinery shared by the Mamba-2 (SSD), Gated DeltaNet and log-linear ops
(mamba2.py, gdn.py, loglinear.py).

Per head h (q/k from group h // (H // G)), tokens t = 0..T-1
(docs/algorithms/README.md#one-recurrence-two-oracles, docs/algorithms/gdn.md#recurrence):

    S_t = A_t S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale * q_t)
    A_t = exp(g_t) (I - beta_t k_t k_t^T)   (GDN)      A_t = exp(g_t) I, beta = 1   (Mamba-2 SSD)

The Mamba-2 case is the delta rule without the k k^T term, so the functions below take
`beta=None` for it and mamba2.py calls them. Forms (same arguments and layouts everywhere):
  *_recurrent  token-by-token lax.scan (oracle; also returns the final state)
  *_quadratic  O = (Aeff o mask) V with the effective attention matrix Aeff (oracle)
  *_chunked    chunked form (docs/algorithms/mamba2.md#chunked-form,
               docs/algorithms/gdn.md#chunked-form: UT/WY transform per chunk), any T, chunk
               size a power of 2
  *_step       one decode token on an explicit state S_BHKV

Chunked form. Inside a chunk (G_t = in-chunk cumsum of g, D[t,s] = exp(G_t - G_s) for s <= t, from
a stable segment sum with the exponent masked before exp):
  A_kk = strict_lower(beta_t D K K^T), T_g = (I + A_kk)^-1, W = T_g diag(beta e^G) K,
  Aeff = tril(Q K^T o D) T_g diag(beta)                 (SSD: Aeff = Q K^T o D, W = 0)
  O_intra = (Aeff o mask) V,  O_inter = Q~ S_chunk_start,  Q~ = e^G o Q - tril(Q K^T o D) W
  S_next = (e^{G_C} I - K2^T W) S + K2^T T_g diag(beta) V,  K2 = e^{G_C - G} o K.
`chunked_recurrence` runs several such recurrences ("streams") side by side with the same
transitions but their own reset / write / read masks: the document resets of packed sequences,
and the per-level streams of log-linear attention (hierarchy.py).

Dtypes: q/k enter their matmuls in the input dtype with fp32 accumulation
(`preferred_element_type`, precision HIGHEST: no TF32); decays, UT transforms, the operands
derived from them and the states are fp32 (fp64 when the inputs are fp64); outputs have v's dtype.
Padding (segment id 0 and the internal padding to whole chunks) is zeroed with `where` before any
product, so NaN-poisoned padding reaches neither outputs nor gradients.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lloglin.ops import checks
from lloglin.ops import hierarchy
from lloglin.ops.attention import acc_dtype
from lloglin.ops.vma import vary_like

HIGHEST = lax.Precision.HIGHEST


def _ein(acc):
  return functools.partial(jnp.einsum, precision=HIGHEST, preferred_element_type=acc)


def expand_groups(x_BTGK, heads):
  """[..., G, K] -> [..., H, K]: head h uses group h // (H // G)."""
  return jnp.repeat(x_BTGK, heads // x_BTGK.shape[-2], axis=-2)


# ------------------------------------------------------------------------------------------------
# One token


def transition(S_BH_KV, k_BHK, g_BH, beta_BH=None):
  """A_t applied to states [B, H, ..., K, V] (any number of middle axes, e.g. levels)."""
  acc = S_BH_KV.dtype
  B, H = g_BH.shape
  ones = (1,) * (S_BH_KV.ndim - 2)
  alpha = jnp.exp(g_BH.astype(acc)).reshape((B, H) + ones)
  if beta_BH is None:
    return alpha * S_BH_KV
  k = k_BHK.astype(acc)
  kS = jnp.einsum('bhk,bh...kv->bh...v', k, S_BH_KV, precision=HIGHEST)
  bk = (beta_BH.astype(acc)[..., None] * k).reshape((B, H) + ones[:-2] + (k.shape[-1], 1))
  return alpha * (S_BH_KV - bk * kS[..., None, :])


def outer_write(k_BHK, v_BHV, beta_BH, acc):
  """beta_t k_t v_t^T as [B, H, K, V] (beta = 1 for SSD)."""
  kv = k_BHK.astype(acc)[..., :, None] * v_BHV.astype(acc)[..., None, :]
  return kv if beta_BH is None else beta_BH.astype(acc)[..., None, None] * kv


def linear_step(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, state_BHKV, *, scale):
  """One token of the plain recurrence: returns (o_BHV, new state_BHKV)."""
  dims = checks.check_step_args(q_BGK=q_BGK, k_BGK=k_BGK, v_BHV=v_BHV, g_BH=g_BH,
                                beta_BH=beta_BH, state_BHKV=state_BHKV)
  H = dims['H']
  acc = acc_dtype(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, state_BHKV)
  q_BHK = expand_groups(q_BGK, H).astype(acc) * scale
  k_BHK = expand_groups(k_BGK, H)
  S = transition(state_BHKV.astype(acc), k_BHK, g_BH, beta_BH)
  S = S + outer_write(k_BHK, v_BHV, beta_BH, acc)
  o_BHV = jnp.einsum('bhk,bhkv->bhv', q_BHK, S, precision=HIGHEST)
  return o_BHV.astype(v_BHV.dtype), S


# ------------------------------------------------------------------------------------------------
# Recurrent oracle


def sanitize(real_BT, *arrays):
  """Zeroes padding tokens (so NaN-poisoned padding never enters any product)."""
  out = []
  for x in arrays:
    if x is None:
      out.append(None)
    else:
      out.append(jnp.where(real_BT.reshape(real_BT.shape + (1,) * (x.ndim - 2)), x, 0))
  return out


def layout_of(segment_ids_BT, batch, seq_len, t0_B=None, padded_len=None):
  """DocumentLayout of the (optionally packed) batch, padded with padding tokens to padded_len."""
  padded_len = seq_len if padded_len is None else padded_len
  if segment_ids_BT is None:
    seg = hierarchy.dense_segment_ids(batch, seq_len, padded_len)
  else:
    seg = jnp.pad(jnp.asarray(segment_ids_BT, jnp.int32), ((0, 0), (0, padded_len - seq_len)))
  return hierarchy.document_layout(seg, t0_B)


def linear_recurrent(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, *, initial_state_BHKV,
                     segment_ids_BT, scale, return_final_state):
  """Token-by-token lax.scan oracle of the plain recurrence (SSD when beta_BTH is None)."""
  dims = checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                                 beta_BTH=beta_BTH, segment_ids_BT=segment_ids_BT,
                                 initial_state_BHKV=initial_state_BHKV)
  B, T, H, K, V = (dims[a] for a in 'BTHKV')
  acc = acc_dtype(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH)
  lay = layout_of(segment_ids_BT, B, T)
  q, k, v, g, beta = sanitize(lay.real_BT, expand_groups(q_BTGK, H) * scale,
                              expand_groups(k_BTGK, H), v_BTHV, g_BTH, beta_BTH)
  S0 = (jnp.zeros((B, H, K, V), acc) if initial_state_BHKV is None
        else initial_state_BHKV.astype(acc))

  def body(S, xs):
    q_t, k_t, v_t, g_t, beta_t, start_t = xs
    S = jnp.where(start_t[:, None, None, None], 0, S)
    S = transition(S, k_t, g_t, beta_t) + outer_write(k_t, v_t, beta_t, acc)
    return S, jnp.einsum('bhk,bhkv->bhv', q_t.astype(acc), S, precision=HIGHEST)

  xs = [None if x is None else jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta, lay.start_BT)]
  S, o_TBHV = lax.scan(body, S0, xs)
  o_BTHV = jnp.moveaxis(o_TBHV, 0, 1).astype(v_BTHV.dtype)
  return (o_BTHV, S) if return_final_state else o_BTHV


# ------------------------------------------------------------------------------------------------
# Quadratic oracle


def quadratic_output(aeff_BHTS, qinit_BTHK, mask_BHTS, v_BTHV, lay, initial_state_BHKV):
  """O = (Aeff o mask) V, plus the initial state read by the first document."""
  acc = aeff_BHTS.dtype
  o = jnp.einsum('bhts,bhts,bshv->bthv', aeff_BHTS, mask_BHTS.astype(acc), v_BTHV.astype(acc),
                 precision=HIGHEST)
  if initial_state_BHKV is not None:
    first = (lay.real_BT & (lay.doc_BT == 0))[..., None, None]
    o = o + jnp.where(first, jnp.einsum('bthk,bhkv->bthv', qinit_BTHK,
                                        initial_state_BHKV.astype(acc), precision=HIGHEST), 0)
  return o.astype(v_BTHV.dtype)


def quadratic_inputs(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, segment_ids_BT, scale, t0_B=None):
  """Shared prologue of the quadratic oracles: layout, heads expanded, padding zeroed."""
  B, T, H = v_BTHV.shape[:3]
  lay = layout_of(segment_ids_BT, B, T, t0_B)
  q, k, v, g, beta = sanitize(lay.real_BT, expand_groups(q_BTGK, H) * scale,
                              expand_groups(k_BTGK, H), v_BTHV, g_BTH, beta_BTH)
  return lay, q, k, v, g, beta


def state_terms(o_BTHV, q_BTHK, k_BTHK, v_BTHV, g_BTH, lay, *, initial_BHMKV, read_BTHM,
                write_BTL, carry_BLM, return_final_state):
  """Completes a Mamba-2-type run computed from a zero state (a kernel's) with what the state
  adds: exact, since SSD and log-linear SSD are linear in their state (the delta rule is not).
  q/k/v/g: heads expanded, q scaled, padding zeroed; G_t = sum_{r <= t} g_r along the row; M
  initial and L final state slots (one each for SSD, the Fenwick levels for log-linear SSD;
  which slot a token or an initial slot goes to does not depend on the head):
    o_t += sum_m read[t, m] exp(G_t) q_t . S0^m             (tokens of the row's first document)
    S^l  = sum_s write[s, l] exp(G_end - G_s) k_s v_s^T      (tokens of the row's last document)
         + sum_m carry[l, m] exp(G_end) S0^m                  (when the last document is the first)
  initial_BHMKV None: no initial state. Returns o_BTHV [and the final S_BHLKV]."""
  acc = acc_dtype(q_BTHK, k_BTHK, v_BTHV, g_BTH)
  G_BTH = jnp.cumsum(g_BTH.astype(acc), axis=1)
  o = o_BTHV
  if initial_BHMKV is not None:
    first_BT = lay.real_BT & (lay.doc_BT == 0)
    qinit_BTHK = jnp.where(first_BT[..., None, None],
                           jnp.exp(G_BTH)[..., None] * q_BTHK.astype(acc), 0)
    o = (o.astype(acc) + jnp.einsum('bthm,bthk,bhmkv->bthv', read_BTHM.astype(acc), qinit_BTHK,
                                    initial_BHMKV.astype(acc), precision=HIGHEST)).astype(o.dtype)
  if not return_final_state:
    return o
  G_end_BH = G_BTH[:, -1]
  last_BT = lay.real_BT & (lay.doc_BT == lay.doc_BT[:, -1:])
  kw_BTHK = jnp.where(last_BT[..., None, None],
                      jnp.exp(G_end_BH[:, None] - G_BTH)[..., None] * k_BTHK.astype(acc), 0)
  S_BHLKV = jnp.einsum('btl,bthk,bthv->bhlkv', write_BTL.astype(acc), kw_BTHK,
                       v_BTHV.astype(acc), precision=HIGHEST)
  if initial_BHMKV is not None:
    kept_BHLKV = jnp.einsum('blm,bhmkv->bhlkv', carry_BLM.astype(acc),
                            initial_BHMKV.astype(acc), precision=HIGHEST)
    continues_B = lay.doc_BT[:, -1] == 0
    S_BHLKV = S_BHLKV + jnp.where(continues_B[:, None, None, None, None],
                                  jnp.exp(G_end_BH)[:, :, None, None, None] * kept_BHLKV, 0)
  return o, S_BHLKV


# ------------------------------------------------------------------------------------------------
# Chunked form


def chunked_recurrence(q_BNGCK, k_BNGCK, v_BNGRCV, g_BNGRC, beta_BNGRC, intra_BNGRCC,
                       reset_XBNC, write_XBNC, rho_XBNGRC, init_XBGRKV):
  """X masked recurrences sharing the transitions, in chunks (N chunks of C tokens, R = H / G).

  Stream x: the state is zeroed before a token with reset_x, the token writes beta k v^T when
  write_x, and the output adds rho_x(t) * q_t^T S_x(t-1 transported to t) for sources in earlier
  chunks. Sources in the same chunk are the intra-chunk term (Aeff o intra) V, so `intra` must hold
  the weight of every (t, s) pair of a chunk (0 = masked). Returns (o_BNGRCV, final S_XBGRKV).
  """
  acc = init_XBGRKV.dtype
  ein = _ein(acc)
  C = g_BNGRC.shape[-1]
  causal_CC = jnp.tril(jnp.ones((C, C), bool))
  strict_CC = jnp.tril(jnp.ones((C, C), bool), -1)
  g = g_BNGRC.astype(acc)
  # seg[t, s] = sum_{s < r <= t} g_r: a cumsum of masked rows, never a difference of cumsums.
  seg_BNGRCC = jnp.cumsum(jnp.where(strict_CC, g[..., :, None], 0), axis=-2)
  decay_BNGRCC = jnp.exp(jnp.where(causal_CC, seg_BNGRCC, -jnp.inf))
  to_end_BNGRC = jnp.exp(seg_BNGRCC[..., -1, :])              # exp(sum_{r > s} g_r)
  from_start_BNGRC = jnp.exp(jnp.cumsum(g, axis=-1))          # exp(sum_{r <= t} g_r)
  qkd_BNGRCC = ein('bngtk,bngsk->bngts', q_BNGCK, k_BNGCK)[:, :, :, None] * decay_BNGRCC
  if beta_BNGRC is None:
    aeff_BNGRCC = qkd_BNGRCC
  else:
    beta = beta_BNGRC.astype(acc)
    kk_BNGCC = ein('bngtk,bngsk->bngts', k_BNGCK, k_BNGCK)
    a_BNGRCC = jnp.where(strict_CC, beta[..., :, None] * decay_BNGRCC * kk_BNGCC[:, :, :, None], 0)
    eye = jnp.broadcast_to(jnp.eye(C, dtype=acc), a_BNGRCC.shape)
    tg_BNGRCC = lax.linalg.triangular_solve(a_BNGRCC, eye, left_side=True, lower=True,
                                            unit_diagonal=True)        # (I + A_kk)^-1
    w_BNGRCK = ein('bngrts,bngrs,bngsk->bngrtk', tg_BNGRCC, beta * from_start_BNGRC, k_BNGCK)
    aeff_BNGRCC = ein('bngrts,bngrsu->bngrtu', qkd_BNGRCC, tg_BNGRCC) * beta[..., None, :]
  o_BNGRCV = ein('bngrts,bngrsv->bngrtv', aeff_BNGRCC * intra_BNGRCC, v_BNGRCV)

  X = reset_XBNC.shape[0]
  if X == 0:
    return o_BNGRCV, init_XBGRKV
  resets_XBNC = jnp.cumsum(reset_XBNC.astype(jnp.int32), axis=-1)
  readable_XBNC = resets_XBNC == 0                               # no reset in [chunk start, t]
  last_XBNC = resets_XBNC == resets_XBNC[..., -1:]               # no reset after t in the chunk
  keep_XBN = resets_XBNC[..., -1] == 0
  rho_XBNGRC = jnp.where(readable_XBNC[:, :, :, None, None, :], rho_XBNGRC, 0).astype(acc)
  wmask_XBNGRC = (write_XBNC & last_XBNC)[:, :, :, None, None, :].astype(acc)
  if beta_BNGRC is None:
    ds_XBNGRKV = ein('bngck,xbngrc,bngrcv->xbngrkv', k_BNGCK, wmask_XBNGRC * to_end_BNGRC,
                     v_BNGRCV)
    read_XBNGRC = rho_XBNGRC * from_start_BNGRC
    trans_BNGR = from_start_BNGRC[..., -1]
    xs = (keep_XBN, trans_BNGR, ds_XBNGRKV, read_XBNGRC, q_BNGCK)
  else:
    k2_BNGRCK = to_end_BNGRC[..., None] * k_BNGCK[:, :, :, None]
    u_XBNGRCV = ein('bngrts,xbngrs,bngrsv->xbngrtv', tg_BNGRCC, wmask_XBNGRC * beta, v_BNGRCV)
    ds_XBNGRKV = ein('bngrck,xbngrcv->xbngrkv', k2_BNGRCK, u_XBNGRCV)
    K = k_BNGCK.shape[-1]
    trans_BNGRKK = (from_start_BNGRC[..., -1, None, None] * jnp.eye(K, dtype=acc)
                    - ein('bngrck,bngrcj->bngrkj', k2_BNGRCK, w_BNGRCK))
    qt_BNGRCK = (from_start_BNGRC[..., None] * q_BNGCK[:, :, :, None]
                 - ein('bngrts,bngrsk->bngrtk', qkd_BNGRCC, w_BNGRCK))
    xs = (keep_XBN, trans_BNGRKK, ds_XBNGRKV, rho_XBNGRC, qt_BNGRCK)

  def body(S_XBGRKV, xs_n):
    keep_XB, trans, ds_XBGRKV, read_XBGRC, q_n = xs_n
    if beta_BNGRC is None:
      o_BGRCV = ein('xbgrc,bgck,xbgrkv->bgrcv', read_XBGRC, q_n, S_XBGRKV)
      moved = trans[..., None, None] * S_XBGRKV
    else:
      o_BGRCV = ein('xbgrc,bgrck,xbgrkv->bgrcv', read_XBGRC, q_n, S_XBGRKV)
      moved = ein('bgrkj,xbgrjv->xbgrkv', trans, S_XBGRKV)
    S_next = jnp.where(keep_XB[:, :, None, None, None, None], moved, 0) + ds_XBGRKV
    return S_next, o_BGRCV

  chunk_axis = (2, 1, 2, 2, 1)                                   # N axis of each xs entry
  xs = tuple(jnp.moveaxis(x, a, 0) for x, a in zip(xs, chunk_axis))
  S_XBGRKV, inter_NBGRCV = lax.scan(body, vary_like(init_XBGRKV, xs), xs)
  return o_BNGRCV + jnp.moveaxis(inter_NBGRCV, 0, 1), S_XBGRKV


class ChunkInputs(NamedTuple):
  """Inputs padded to N * C tokens (padding zeroed) in the chunked layout; lay covers the N * C."""
  q_BNGCK: jax.Array
  k_BNGCK: jax.Array
  v_BNGRCV: jax.Array
  g_BNGRC: jax.Array
  beta_BNGRC: jax.Array | None
  lay: hierarchy.DocumentLayout


def to_chunks(x_BT, lay, chunk_size, groups=None):
  """[B, T, ...] -> [B, N, C, ...] padded and sanitized; with groups, a head axis H (axis 2) is
  split to (G, R) and moved in front of C: [B, N, G, R, C, ...]."""
  B, T = x_BT.shape[:2]
  P = lay.real_BT.shape[1]
  x = jnp.pad(x_BT, [(0, 0), (0, P - T)] + [(0, 0)] * (x_BT.ndim - 2))
  (x,) = sanitize(lay.real_BT, x)
  x = x.reshape((B, P // chunk_size, chunk_size) + x.shape[2:])
  if groups is None:
    return x
  H = x.shape[3]
  x = x.reshape(x.shape[:3] + (groups, H // groups) + x.shape[4:])
  return jnp.moveaxis(x, 2, 4)


def chunk_inputs(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, segment_ids_BT, chunk_size, scale,
                 t0_B=None):
  """Pads T to a multiple of chunk_size with padding tokens and moves to the chunked layout."""
  B, T, G = q_BTGK.shape[:3]
  P = -(-T // chunk_size) * chunk_size
  lay = layout_of(segment_ids_BT, B, T, t0_B, P)
  q = jnp.moveaxis(to_chunks(q_BTGK * scale, lay, chunk_size), 3, 2)
  k = jnp.moveaxis(to_chunks(k_BTGK, lay, chunk_size), 3, 2)
  v = to_chunks(v_BTHV, lay, chunk_size, G)
  g = to_chunks(g_BTH, lay, chunk_size, G)
  beta = None if beta_BTH is None else to_chunks(beta_BTH, lay, chunk_size, G)
  return ChunkInputs(q, k, v, g, beta, lay)


def from_chunks(o_BNGRCV, seq_len):
  """[B, N, G, R, C, V] -> [B, T, H, V]."""
  B, N, G, R, C, V = o_BNGRCV.shape
  return jnp.moveaxis(o_BNGRCV, 4, 2).reshape(B, N * C, G * R, V)[:, :seq_len]


def tokens_to_chunks(x_BP, chunk_size):
  """[..., B, P] per-token masks -> [..., B, N, C]."""
  return x_BP.reshape(x_BP.shape[:-1] + (x_BP.shape[-1] // chunk_size, chunk_size))


def chunk_pairs(pair_fn, lay, chunk_size):
  """pair_fn(pos, doc, real) ([B', C] each -> [B', C, C]) within every chunk: [B, N, C, C]."""
  B, P = lay.real_BT.shape
  N = P // chunk_size
  flat = [tokens_to_chunks(a, chunk_size).reshape(B * N, chunk_size)
          for a in (lay.pos_BT, lay.doc_BT, lay.real_BT)]
  return pair_fn(*flat).reshape(B, N, chunk_size, chunk_size)


def linear_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, *, initial_state_BHKV,
                   segment_ids_BT, chunk_size, scale, return_final_state):
  """Chunked form of the plain recurrence (SSD when beta_BTH is None); one stream, reset at
  document starts."""
  dims = checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                                 beta_BTH=beta_BTH, segment_ids_BT=segment_ids_BT,
                                 initial_state_BHKV=initial_state_BHKV, chunk_size=chunk_size)
  B, T, G, H, K, V = (dims[a] for a in 'BTGHKV')
  acc = acc_dtype(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH)
  ci = chunk_inputs(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, segment_ids_BT, chunk_size, scale)
  same_BNCC = chunk_pairs(lambda pos, doc, real: hierarchy.same_document_pairs(doc, real),
                          ci.lay, chunk_size)
  real_XBNC = tokens_to_chunks(ci.lay.real_BT, chunk_size)[None]
  rho_XBNGRC = jnp.broadcast_to(real_XBNC[:, :, :, None, None, :].astype(acc),
                                real_XBNC.shape[:3] + (G, H // G, chunk_size))
  S0 = (jnp.zeros((B, H, K, V), acc) if initial_state_BHKV is None
        else initial_state_BHKV.astype(acc))
  o_BNGRCV, S_XBGRKV = chunked_recurrence(
      ci.q_BNGCK, ci.k_BNGCK, ci.v_BNGRCV, ci.g_BNGRC, ci.beta_BNGRC,
      same_BNCC[:, :, None, None].astype(acc),
      tokens_to_chunks(ci.lay.start_BT, chunk_size)[None], real_XBNC, rho_XBNGRC,
      S0.reshape(1, B, G, H // G, K, V))
  o_BTHV = from_chunks(o_BNGRCV, T).astype(v_BTHV.dtype)
  return (o_BTHV, S_XBGRKV.reshape(B, H, K, V)) if return_final_state else o_BTHV
