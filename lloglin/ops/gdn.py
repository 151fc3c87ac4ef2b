"""Gated DeltaNet (GDN) ops: the delta rule with a per-head gated decay.

    S_t = A_t S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T (scale * q_t)
    A_t = exp(g_t) (I - beta_t k_t k_t^T)

q/k have G groups shared by H / G consecutive value heads (head h reads group h // (H // G)).
The recurrent, chunked (UT/WY transform per chunk) and one-token forms are the shared linear
recurrence's (linear_recurrence.py) with beta given; the quadratic oracle builds GDN's effective
attention matrix here (the log-linear GDN oracle in loglinear.py reuses it).

Arguments (every form): q_BTGK, k_BTGK, v_BTHV, g_BTH (log-decay, <= 0), beta_BTH (write
strength), initial_state_BHKV (fp32 state to continue from), segment_ids_BT (packed documents
from 1, 0 = padding; the state resets at each document start), scale (multiplies q).
"""

import jax.numpy as jnp
from jax import lax

from lloglin.ops import checks
from lloglin.ops import hierarchy
from lloglin.ops import linear_recurrence
from lloglin.ops.attention import acc_dtype

__all__ = ['gdn_recurrent', 'gdn_quadratic', 'gdn_chunked', 'gdn_step']

HIGHEST = lax.Precision.HIGHEST


def gdn_effective_attention(q_BTHK, k_BTHK, g_BTH, beta_BTH):
  """Aeff[t, s] = q_t^T A_t ... A_{s+1} beta_s k_s (s <= t), the loop vectorised over t.

  Returns (aeff_BHTS, qinit_BTHK) with qinit_t = A_0 ... A_t q_t (reads an initial state).
  """
  acc = acc_dtype(q_BTHK, k_BTHK, g_BTH, beta_BTH)
  T = q_BTHK.shape[1]
  tpos = jnp.arange(T)

  def body(u_BHTK, xs):
    s, k_s, g_s, beta_s = xs
    active = (tpos >= s)[None, None, :]
    dot_BHT = jnp.einsum('bhtk,bhk->bht', u_BHTK, k_s, precision=HIGHEST)
    col_BHT = jnp.where(active, beta_s[..., None] * dot_BHT, 0)
    new = jnp.exp(g_s)[..., None, None] * (
        u_BHTK - (beta_s[..., None] * dot_BHT)[..., None] * k_s[:, :, None, :])
    return jnp.where(active[..., None], new, u_BHTK), col_BHT

  u0 = jnp.moveaxis(q_BTHK.astype(acc), 1, 2)
  xs = (tpos, jnp.moveaxis(k_BTHK.astype(acc), 1, 0), jnp.moveaxis(g_BTH.astype(acc), 1, 0),
        jnp.moveaxis(beta_BTH.astype(acc), 1, 0))
  u, cols_SBHT = lax.scan(body, u0, xs, reverse=True)
  return jnp.transpose(cols_SBHT, (1, 2, 3, 0)), jnp.moveaxis(u, 2, 1)


def gdn_recurrent(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, *, initial_state_BHKV=None,
                  segment_ids_BT=None, scale=1.0, return_final_state=False):
  """Gated DeltaNet, token by token (oracle). Returns o_BTHV [and the final state_BHKV]."""
  return linear_recurrence.linear_recurrent(
      q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, initial_state_BHKV=initial_state_BHKV,
      segment_ids_BT=segment_ids_BT, scale=scale, return_final_state=return_final_state)


def gdn_quadratic(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, *, initial_state_BHKV=None,
                  segment_ids_BT=None, scale=1.0):
  """Gated DeltaNet as O = (Aeff o same-document mask) V, O(T^2 d) (oracle)."""
  checks.check_mixer_args(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH,
                          beta_BTH=beta_BTH, segment_ids_BT=segment_ids_BT,
                          initial_state_BHKV=initial_state_BHKV)
  lay, q, k, v, g, beta = linear_recurrence.quadratic_inputs(
      q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, segment_ids_BT, scale)
  aeff_BHTS, qinit_BTHK = gdn_effective_attention(q, k, g, beta)
  mask_BHTS = hierarchy.same_document_pairs(lay.doc_BT, lay.real_BT)[:, None]
  return linear_recurrence.quadratic_output(aeff_BHTS, qinit_BTHK, mask_BHTS, v, lay,
                                            initial_state_BHKV)


def gdn_chunked(q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, *, initial_state_BHKV=None,
                segment_ids_BT=None, chunk_size=64, scale=1.0, return_final_state=False):
  """Gated DeltaNet in chunks (UT/WY transform per chunk). Returns o_BTHV [and state_BHKV]."""
  return linear_recurrence.linear_chunked(
      q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH, initial_state_BHKV=initial_state_BHKV,
      segment_ids_BT=segment_ids_BT, chunk_size=chunk_size, scale=scale,
      return_final_state=return_final_state)


def gdn_step(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, state_BHKV, *, scale=1.0):
  """One decode token: returns (o_BHV, new state_BHKV)."""
  return linear_recurrence.linear_step(q_BGK, k_BGK, v_BHV, g_BH, beta_BH, state_BHKV,
                                       scale=scale)
