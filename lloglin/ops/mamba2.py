"""Mamba-2 SSD as linear attention (docs/algorithms/mamba2.md#as-linear-attention): q = C, k = B,
v = Delta * x, g = Delta * A.

    S_t = exp(g_t) S_{t-1} + k_t v_t^T,   o_t = S_t^T (scale * q_t)      (S_t: [K, V] per head)

The Mamba-2 layer maps its parameters onto these arguments and adds D * x itself. q/k have G
groups shared by H / G consecutive heads (head h reads group h // (H // G)). The recurrent and
chunked machinery is the delta rule's without the k k^T term (linear_recurrence.py, beta=None).

Arguments (every form): q_BTGK, k_BTGK, v_BTHV, g_BTH (log-decay, <= 0), initial_state_BHKV (fp32
state to continue from), segment_ids_BT (packed documents from 1, 0 = padding; the state resets
at each document start, padding outputs 0 and leaves the state unchanged), scale (multiplies q).
"""

import jax.numpy as jnp
from jax import lax

from lloglin.ops import checks
from lloglin.ops import hierarchy
from lloglin.ops import linear_recurrence
from lloglin.ops.attention import acc_dtype

__all__ = ['ssd_recurrent', 'ssd_quadratic', 'ssd_chunked', 'ssd_step', 'ssd_state_terms']


def ssd_recurrent(q_BTGK, k_BTGK, v_BTHV, g_BTH, *, initial_state_BHKV=None, segment_ids_BT=None,
                  scale=1.0, return_final_state=False):
  """Token-by-token lax.scan (oracle). Returns o_BTHV [and the final state_BHKV]."""
  return linear_recurrence.linear_recurrent(q_BTGK, k_BTGK, v_BTHV, g_BTH, None,
                                            initial_state_BHKV=initial_state_BHKV,
                                            segment_ids_BT=segment_ids_BT, scale=scale,
                                            return_final_state=return_final_state)


def ssd_effective_attention(q_BTHK, k_BTHK, g_BTH):
  """Aeff[t, s] = q_t . k_s exp(sum_{s < r <= t} g_r) (s <= t; 0 above the diagonal) and
  qinit_t = exp(sum_{r <= t} g_r) q_t, the query that reads an initial state."""
  acc = acc_dtype(q_BTHK, k_BTHK, g_BTH)
  T = g_BTH.shape[1]
  g_BHT = jnp.moveaxis(g_BTH.astype(acc), 1, 2)
  strict_TT = jnp.tril(jnp.ones((T, T), bool), -1)
  seg_BHTT = jnp.cumsum(jnp.where(strict_TT, g_BHT[..., :, None], 0), axis=-2)
  decay_BHTT = jnp.exp(jnp.where(jnp.tril(jnp.ones((T, T), bool)), seg_BHTT, -jnp.inf))
  qk_BHTS = jnp.einsum('bthk,bshk->bhts', q_BTHK, k_BTHK, precision=lax.Precision.HIGHEST,
                       preferred_element_type=acc)
  qinit_BTHK = jnp.exp(jnp.cumsum(g_BTH.astype(acc), axis=1))[..., None] * q_BTHK.astype(acc)
  return qk_BHTS * decay_BHTT, qinit_BTHK


def ssd_quadratic(q_BTGK, k_BTGK, v_BTHV, g_BTH, *, initial_state_BHKV=None, segment_ids_BT=None,
                  scale=1.0):
  """O = (Q K^T o exp(segsum g) o same-document mask) V, O(T^2 d) (oracle)."""
  checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                          segment_ids_BT=segment_ids_BT, initial_state_BHKV=initial_state_BHKV)
  lay, q, k, v, g, _ = linear_recurrence.quadratic_inputs(q_BTGK, k_BTGK, v_BTHV, g_BTH, None,
                                                          segment_ids_BT, scale)
  aeff_BHTS, qinit_BTHK = ssd_effective_attention(q, k, g)
  mask_BHTS = hierarchy.same_document_pairs(lay.doc_BT, lay.real_BT)[:, None]
  return linear_recurrence.quadratic_output(aeff_BHTS, qinit_BTHK, mask_BHTS, v, lay,
                                            initial_state_BHKV)


def ssd_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, *, initial_state_BHKV=None, segment_ids_BT=None,
                chunk_size=64, scale=1.0, return_final_state=False):
  """Chunked SSD (ssd_minimal's four steps, state passing by lax.scan over chunks).

  Any T (padded internally to a multiple of chunk_size, a power of two). Returns o_BTHV
  [and the final state_BHKV, fp32].
  """
  return linear_recurrence.linear_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, None,
                                          initial_state_BHKV=initial_state_BHKV,
                                          segment_ids_BT=segment_ids_BT, chunk_size=chunk_size,
                                          scale=scale, return_final_state=return_final_state)


def ssd_state_terms(o_BTHV, q_BTGK, k_BTGK, v_BTHV, g_BTH, *, initial_state_BHKV=None,
                    segment_ids_BT=None, scale=1.0, return_final_state=False):
  """Completes o_BTHV computed from a zero state (the Pallas kernels') into ssd_chunked's result
  with initial_state_BHKV and return_final_state (linear_recurrence.state_terms). Returns o_BTHV
  [and the final state_BHKV, fp32]."""
  lay, q, k, v, g, _ = linear_recurrence.quadratic_inputs(q_BTGK, k_BTGK, v_BTHV, g_BTH, None,
                                                          segment_ids_BT, scale)
  B, T, H = v.shape[:3]
  out = linear_recurrence.state_terms(
      o_BTHV, q, k, v, g, lay,
      initial_BHMKV=None if initial_state_BHKV is None else initial_state_BHKV[:, :, None],
      read_BTHM=jnp.ones((B, T, H, 1), g.dtype), write_BTL=jnp.ones((B, T, 1), g.dtype),
      carry_BLM=jnp.ones((B, 1, 1), g.dtype), return_final_state=return_final_state)
  return (out[0], out[1][:, :, 0]) if return_final_state else out


def ssd_step(q_BGK, k_BGK, v_BHV, g_BH, state_BHKV, *, scale=1.0):
  """One decode token: returns (o_BHV, new state_BHKV)."""
  return linear_recurrence.linear_step(q_BGK, k_BGK, v_BHV, g_BH, None, state_BHKV, scale=scale)
