"""Log-linear Mamba-2 and log-linear Gated DeltaNet (docs/algorithms/loglinear.md).

    O = (Aeff o M^H) V,   M^H[t, s] = lam_t^(level(t, s)),   level(t, s) = bit_length(t XOR s)

with Aeff the base model's effective attention (mamba2.py: q = C, k = B, v = Delta x,
g = Delta A; gdn.py: the gated delta rule) and t, s positions inside the document. lam_BTHL holds
L levels per token and head (the layer configures L, e.g. 15); a sequence needs ceil(log2 T) + 1
of them.
With lam == 1 every form reduces to its base model.

Forms (same arguments for both bases; the GDN functions take beta_BTH after g_BTH):
  *_recurrent  lax.scan of the Fenwick decode step (carry rule:
               docs/algorithms/loglinear.md#decode), oracle
  *_quadratic  the masked effective-attention matrix, O(T^2 d), oracle
  *_chunked    level-parallel masked scans (docs/algorithms/loglinear.md#chunked-training): one
               intra-chunk pass with the level mask, and one chunk-state recurrence per level
               (vmapped as a stream axis of linear_recurrence.chunked_recurrence; Mamba-2 is
               the W = 0, U = V case of the GDN form)
  *_step       one decode token on a FenwickState(S_BHLKV, t_B)

States: `initial_state` / the returned final state are `hierarchy.FenwickState`s, so a chunked
prefill can be continued by `*_step` or by another chunked call. Positions at or beyond the
capacity of L levels (2^(L-1)) cannot raise inside jit: their outputs (and the states after them)
are NaN. Without segment_ids the sequence length is also checked statically (ValueError).
"""

import jax
import jax.numpy as jnp
from jax import lax

from lloglin.ops import checks
from lloglin.ops import gdn
from lloglin.ops import hierarchy
from lloglin.ops import linear_recurrence
from lloglin.ops import mamba2
from lloglin.ops.attention import acc_dtype
from lloglin.ops.hierarchy import FenwickState

__all__ = [f'loglinear_{base}_{form}' for base in ('ssd', 'gdn')
           for form in ('recurrent', 'quadratic', 'chunked', 'step')] + [
               'loglinear_ssd_state_terms', 'nan_past_capacity', 'FenwickState']

HIGHEST = lax.Precision.HIGHEST


def _poison(x, overflow):
  """NaN where positions overflow the hierarchy (cannot raise inside jit); overflow is [B] or
  [B, T] and broadcasts over the trailing axes of x."""
  return jnp.where(overflow.reshape(overflow.shape + (1,) * (x.ndim - overflow.ndim)), jnp.nan, x)


def _overflow_BT(lay, levels):
  return lay.real_BT & (lay.pos_BT >= hierarchy.capacity(levels))


def nan_past_capacity(o_BTHV, state, lay, levels):
  """(o_BTHV, state) with NaN outputs at positions past the capacity of `levels` and a NaN final
  FenwickState (None: none) whose step count exceeds it: an overflow cannot raise inside jit."""
  o_BTHV = _poison(o_BTHV, _overflow_BT(lay, levels))
  if state is not None:
    state = FenwickState(_poison(state.S_BHLKV, state.t_B > hierarchy.capacity(levels)),
                         state.t_B)
  return o_BTHV, state


# ------------------------------------------------------------------------------------------------
# Decode step and recurrent oracle


def _fenwick_step(q_BHK, k_BHK, v_BHV, g_BH, beta_BH, lam_BHL, state, acc):
  """Carry, transition of every level, level 0 <- beta k v^T, read o = sum_l lam^l S^l^T q."""
  L = state.S_BHLKV.shape[2]
  S = hierarchy.fenwick_carry(state.S_BHLKV.astype(acc), state.t_B)
  S = linear_recurrence.transition(S, k_BHK, g_BH, beta_BH)
  S = S.at[:, :, 0].set(linear_recurrence.outer_write(k_BHK, v_BHV, beta_BH, acc))
  o_BHV = jnp.einsum('bhk,bhl,bhlkv->bhv', q_BHK.astype(acc), lam_BHL.astype(acc), S,
                     precision=HIGHEST)
  overflow_B = hierarchy.fenwick_overflow(state.t_B, L)
  return _poison(o_BHV, overflow_B), FenwickState(_poison(S, overflow_B),
                                                  jnp.asarray(state.t_B, jnp.int32) + 1)


def _step(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, lam_BHL, state, scale):
  dims = checks.check_step_args(q_BGK=q_BGK, k_BGK=k_BGK, v_BHV=v_BHV, g_BH=g_BH,
                                beta_BH=beta_BH, lam_BHL=lam_BHL, state=state)
  H = dims['H']
  acc = acc_dtype(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, lam_BHL, state.S_BHLKV)
  o_BHV, state = _fenwick_step(linear_recurrence.expand_groups(q_BGK, H) * scale,
                               linear_recurrence.expand_groups(k_BGK, H), v_BHV, g_BH, beta_BH,
                               lam_BHL, state, acc)
  return o_BHV.astype(v_BHV.dtype), state


def _recurrent(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *, initial_state,
               segment_ids_BT, scale, return_final_state):
  dims = checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                                 beta_BTH=beta_BTH, lam_BTHL=lam_BTHL,
                                 segment_ids_BT=segment_ids_BT, initial_state=initial_state)
  B, T, H, K, V, L = (dims[a] for a in 'BTHKVL')
  acc = acc_dtype(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL)
  lay = linear_recurrence.layout_of(segment_ids_BT, B, T)
  q, k, v, g, beta, lam = linear_recurrence.sanitize(
      lay.real_BT, linear_recurrence.expand_groups(q_BTGK, H) * scale,
      linear_recurrence.expand_groups(k_BTGK, H), v_BTHV, g_BTH, beta_BTH, lam_BTHL)
  state0 = (hierarchy.fenwick_zeros(B, H, L, K, V, acc) if initial_state is None
            else FenwickState(initial_state.S_BHLKV.astype(acc),
                              jnp.asarray(initial_state.t_B, jnp.int32)))

  def body(state, xs):
    q_t, k_t, v_t, g_t, beta_t, lam_t, real_B, start_B = xs
    S = jnp.where(start_B[:, None, None, None, None], 0, state.S_BHLKV)
    t = jnp.where(start_B, 0, state.t_B)
    o_BHV, new = _fenwick_step(q_t, k_t, v_t, g_t, beta_t, lam_t, FenwickState(S, t), acc)
    S = jnp.where(real_B[:, None, None, None, None], new.S_BHLKV, S)
    t = jnp.where(real_B, new.t_B, t)
    return FenwickState(S, t), jnp.where(real_B[:, None, None], o_BHV, 0)

  xs = [None if x is None else jnp.moveaxis(x, 1, 0)
        for x in (q, k, v, g, beta, lam, lay.real_BT, lay.start_BT)]
  state, o_TBHV = lax.scan(body, state0, xs)
  o_BTHV = jnp.moveaxis(o_TBHV, 0, 1).astype(v_BTHV.dtype)
  return (o_BTHV, state) if return_final_state else o_BTHV


# ------------------------------------------------------------------------------------------------
# Quadratic oracle


def _quadratic(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *, initial_state,
               segment_ids_BT, scale):
  dims = checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                                 beta_BTH=beta_BTH, lam_BTHL=lam_BTHL,
                                 segment_ids_BT=segment_ids_BT, initial_state=initial_state)
  L = dims['L']
  t0_B = None if initial_state is None else initial_state.t_B
  lay, q, k, v, g, beta = linear_recurrence.quadratic_inputs(
      q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, segment_ids_BT, scale, t0_B)
  if beta is None:
    aeff_BHTS, qinit_BTHK = mamba2.ssd_effective_attention(q, k, g)
  else:
    aeff_BHTS, qinit_BTHK = gdn.gdn_effective_attention(q, k, g, beta)
  acc = aeff_BHTS.dtype
  (lam,) = linear_recurrence.sanitize(lay.real_BT, lam_BTHL.astype(acc))
  onehot_BTSL = jax.nn.one_hot(hierarchy.pair_levels(lay.pos_BT, lay.doc_BT, lay.real_BT, L), L,
                               dtype=acc)
  mask_BHTS = jnp.einsum('bthl,btsl->bhts', lam, onehot_BTSL, precision=HIGHEST)
  o_BTHV = linear_recurrence.quadratic_output(aeff_BHTS, qinit_BTHK, mask_BHTS, v, lay,
                                              None).astype(acc)
  if initial_state is not None:
    first = (lay.real_BT & (lay.doc_BT == 0))[..., None, None]
    o_BTHV = o_BTHV + jnp.where(first, jnp.einsum(
        'bthm,bthk,bhmkv->bthv', _initial_read_weights(lay, lam, t0_B), qinit_BTHK,
        initial_state.S_BHLKV.astype(acc), precision=HIGHEST), 0)
  return _poison(o_BTHV, _overflow_BT(lay, L)).astype(v_BTHV.dtype)


def _initial_representatives(t0_B, levels):
  """[B, M] a source position of each bucket of the initial state (taken after position t0 - 1):
  a later query p reads bucket m at level(p, representative m)."""
  return hierarchy.bucket_representative(jnp.asarray(t0_B, jnp.int32) - 1, levels)


def _initial_read_weights(lay, lam_BTHL, t0_B):
  """[B, T, H, M] lambda with which each token reads bucket m of the initial state."""
  L = lam_BTHL.shape[-1]
  rep_BM = _initial_representatives(t0_B, L)
  lvl_BTM = hierarchy.level_index(lay.pos_BT[:, :, None], rep_BM[:, None, :])
  return jnp.einsum('bthl,btml->bthm', lam_BTHL, jax.nn.one_hot(lvl_BTM, L, dtype=lam_BTHL.dtype),
                    precision=HIGHEST)


# ------------------------------------------------------------------------------------------------
# Chunked form


def _chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *, initial_state, segment_ids_BT,
             chunk_size, scale, return_final_state):
  dims = checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                                 beta_BTH=beta_BTH, lam_BTHL=lam_BTHL,
                                 segment_ids_BT=segment_ids_BT, initial_state=initial_state,
                                 chunk_size=chunk_size)
  B, T, G, H, K, V, L = (dims[a] for a in 'BTGHKVL')
  R, C = H // G, chunk_size
  acc = acc_dtype(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL)
  t0_B = None if initial_state is None else jnp.asarray(initial_state.t_B, jnp.int32)
  ci = linear_recurrence.chunk_inputs(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, segment_ids_BT,
                                      C, scale, t0_B)
  lay = ci.lay
  lam_BNGRCL = linear_recurrence.to_chunks(lam_BTHL, lay, C, G).astype(acc)

  # Intra-chunk: every level, from document positions (chunks need not align with documents).
  lvl_BNCC = linear_recurrence.chunk_pairs(
      lambda pos, doc, real: hierarchy.pair_levels(pos, doc, real, L), lay, C)
  intra_BNGRCC = jnp.einsum('bngrtl,bntsl->bngrts', lam_BNGRCL,
                            jax.nn.one_hot(lvl_BNCC, L, dtype=acc), precision=HIGHEST)

  # Inter-chunk: one stream per level. When chunks align with the hierarchy (no documents, no
  # initial state) the levels <= log2 C are reset at every chunk start and contribute nothing.
  aligned = segment_ids_BT is None and initial_state is None and not return_final_state
  lo = C.bit_length() if aligned else 0                          # log2(C) + 1
  hi = L if initial_state is not None else min(L, hierarchy.num_levels(T))
  levels = list(range(lo, hi))
  reset_XBP, write_XBP, read_XBP = hierarchy.level_stream_masks(lay.pos_BT, lay.real_BT, levels)
  read_XBNC = linear_recurrence.tokens_to_chunks(read_XBP, C)
  rho_XBNGRC = (jnp.moveaxis(lam_BNGRCL[..., lo:hi], -1, 0)
                * read_XBNC[:, :, :, None, None, :].astype(acc))
  if initial_state is None:
    init_XBGRKV = jnp.zeros((len(levels), B, G, R, K, V), acc)
  else:
    streams_LBHKV = hierarchy.fenwick_to_level_streams(initial_state.S_BHLKV.astype(acc), t0_B)
    init_XBGRKV = streams_LBHKV[lo:hi].reshape(len(levels), B, G, R, K, V)
  o_BNGRCV, S_XBGRKV = linear_recurrence.chunked_recurrence(
      ci.q_BNGCK, ci.k_BNGCK, ci.v_BNGRCV, ci.g_BNGRC, ci.beta_BNGRC, intra_BNGRCC,
      linear_recurrence.tokens_to_chunks(reset_XBP, C),
      linear_recurrence.tokens_to_chunks(write_XBP, C), rho_XBNGRC, init_XBGRKV)

  o_BTHV = _poison(linear_recurrence.from_chunks(o_BNGRCV, T), _overflow_BT(lay, L)[:, :T])
  o_BTHV = o_BTHV.astype(v_BTHV.dtype)
  if not return_final_state:
    return o_BTHV
  # Streams of levels >= hi hold no Fenwick bucket (their bit of the last position is 0).
  S_LBHKV = jnp.pad(S_XBGRKV.reshape(len(levels), B, H, K, V),
                    ((lo, L - hi), (0, 0), (0, 0), (0, 0), (0, 0)))
  S_BHLKV = _poison(hierarchy.level_streams_to_fenwick(S_LBHKV, lay.count_B),
                    lay.count_B > hierarchy.capacity(L))
  return o_BTHV, FenwickState(S_BHLKV, lay.count_B)


# ------------------------------------------------------------------------------------------------
# Public ops


def loglinear_ssd_recurrent(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, *, initial_state=None,
                            segment_ids_BT=None, scale=1.0, return_final_state=False):
  """Log-linear Mamba-2 token by token (oracle). Returns o_BTHV [and the final FenwickState]."""
  return _recurrent(q_BTGK, k_BTGK, v_BTHV, g_BTH, None, lam_BTHL, initial_state=initial_state,
                    segment_ids_BT=segment_ids_BT, scale=scale,
                    return_final_state=return_final_state)


def loglinear_ssd_quadratic(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, *, initial_state=None,
                            segment_ids_BT=None, scale=1.0):
  """Log-linear Mamba-2 as (Aeff o M^H) V (oracle)."""
  return _quadratic(q_BTGK, k_BTGK, v_BTHV, g_BTH, None, lam_BTHL, initial_state=initial_state,
                    segment_ids_BT=segment_ids_BT, scale=scale)


def loglinear_ssd_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, *, initial_state=None,
                          segment_ids_BT=None, chunk_size=64, scale=1.0,
                          return_final_state=False):
  """Log-linear Mamba-2 in chunks. Returns o_BTHV [and the FenwickState after the sequence]."""
  return _chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, None, lam_BTHL, initial_state=initial_state,
                  segment_ids_BT=segment_ids_BT, chunk_size=chunk_size, scale=scale,
                  return_final_state=return_final_state)


def loglinear_ssd_state_terms(o_BTHV, q_BTGK, k_BTGK, v_BTHV, g_BTH, lam_BTHL, *,
                              initial_state=None, segment_ids_BT=None, scale=1.0,
                              return_final_state=False):
  """Completes o_BTHV computed from an empty state and positions from 0 (the Pallas kernels')
  into loglinear_ssd_chunked's result with initial_state (a FenwickState; o_BTHV must then come
  from positions offset by its t_B) and return_final_state (linear_recurrence.state_terms; the
  final state's level l holds the sources s of the last document with level(p, s) = l, p its last
  position). Returns o_BTHV [and the FenwickState after the sequence]."""
  L = lam_BTHL.shape[-1]
  t0_B = None if initial_state is None else jnp.asarray(initial_state.t_B, jnp.int32)
  lay, q, k, v, g, _ = linear_recurrence.quadratic_inputs(q_BTGK, k_BTGK, v_BTHV, g_BTH, None,
                                                          segment_ids_BT, scale, t0_B)
  acc = acc_dtype(q, k, v, g, lam_BTHL)
  (lam,) = linear_recurrence.sanitize(lay.real_BT, lam_BTHL.astype(acc))
  p_B = lay.count_B - 1
  write_BTL = jax.nn.one_hot(hierarchy.level_index(p_B[:, None], lay.pos_BT), L, dtype=acc)
  init = read_BTHM = carry_BLM = None
  if initial_state is not None:
    init = initial_state.S_BHLKV
    read_BTHM = _initial_read_weights(lay, lam, t0_B)
    lvl_BM = hierarchy.level_index(p_B[:, None], _initial_representatives(t0_B, L))
    carry_BLM = jnp.swapaxes(jax.nn.one_hot(lvl_BM, L, dtype=acc), 1, 2)
  out = linear_recurrence.state_terms(o_BTHV, q, k, v, g, lay, initial_BHMKV=init,
                                      read_BTHM=read_BTHM, write_BTL=write_BTL,
                                      carry_BLM=carry_BLM, return_final_state=return_final_state)
  o, S_BHLKV = out if return_final_state else (out, None)
  o, state = nan_past_capacity(o, None if S_BHLKV is None else FenwickState(S_BHLKV, lay.count_B),
                               lay, L)
  return (o, state) if return_final_state else o


def loglinear_ssd_step(q_BGK, k_BGK, v_BHV, g_BH, lam_BHL, state, *, scale=1.0):
  """One decode token on a FenwickState: returns (o_BHV, new FenwickState)."""
  return _step(q_BGK, k_BGK, v_BHV, g_BH, None, lam_BHL, state, scale)


def loglinear_gdn_recurrent(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *,
                            initial_state=None, segment_ids_BT=None, scale=1.0,
                            return_final_state=False):
  """Log-linear Gated DeltaNet token by token (oracle). Returns o_BTHV [and the FenwickState]."""
  return _recurrent(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL,
                    initial_state=initial_state, segment_ids_BT=segment_ids_BT, scale=scale,
                    return_final_state=return_final_state)


def loglinear_gdn_quadratic(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *,
                            initial_state=None, segment_ids_BT=None, scale=1.0):
  """Log-linear Gated DeltaNet as (Aeff o M^H) V (oracle)."""
  return _quadratic(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL,
                    initial_state=initial_state, segment_ids_BT=segment_ids_BT, scale=scale)


def loglinear_gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, *,
                          initial_state=None, segment_ids_BT=None, chunk_size=64, scale=1.0,
                          return_final_state=False):
  """Log-linear Gated DeltaNet in chunks. Returns o_BTHV [and the FenwickState after it]."""
  return _chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, lam_BTHL, initial_state=initial_state,
                  segment_ids_BT=segment_ids_BT, chunk_size=chunk_size, scale=scale,
                  return_final_state=return_final_state)


def loglinear_gdn_step(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, lam_BHL, state, *, scale=1.0):
  """One decode token on a FenwickState: returns (o_BHV, new FenwickState)."""
  return _step(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, lam_BHL, state, scale)
