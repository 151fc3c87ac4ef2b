"""Causal softmax attention with grouped-query heads, its one-token decode step, and RoPE.

Head mapping (shared with `jax.nn.dot_product_attention` and `lloglin.ops.path`): query head `h`
reads key/value group `h // (H // G)`.

Packed sequences: `segment_ids_BT` (int32, documents numbered from 1, 0 = padding). A query attends
to keys of its own document only. Padding tokens are zeroed before use, so NaN or inf in padding
never reaches outputs or gradients; outputs at padding positions are 0.
"""

import jax
import jax.numpy as jnp

from lloglin.ops import checks

HIGHEST = jax.lax.Precision.HIGHEST


def acc_dtype(*arrays):
  """The accumulation dtype of every mixer op: float32, or float64 when an input is float64
  (None entries skipped)."""
  return jnp.result_type(jnp.float32, *[x.dtype for x in arrays if x is not None])


def sanitize_padding(segment_ids_BT, *xs_BT):
  """Zeroes padding positions (segment id 0) of each `[B, T, ...]` array (None passes through).

  `where` (not multiplication) so NaN/inf in padding is removed and its gradient is exactly 0.
  """
  if segment_ids_BT is None:
    return xs_BT
  valid_BT = segment_ids_BT > 0
  out = []
  for x in xs_BT:
    if x is None:
      out.append(None)
    else:
      mask = valid_BT.reshape(valid_BT.shape + (1,) * (x.ndim - 2))
      out.append(jnp.where(mask, x, jnp.zeros((), x.dtype)))
  return tuple(out)


def _check_qkv(q_BTHK, k_BSGK, v_BSGV, segment_ids_BT):
  """Validates self-attention inputs; returns (B, T, H, G, K)."""
  dims, _ = checks.check_shapes(
      q_BTHK=q_BTHK, k_BSGK=k_BSGK, v_BSGV=v_BSGV, segment_ids_BT=segment_ids_BT)
  checks.check_floating(q_BTHK=q_BTHK, k_BSGK=k_BSGK, v_BSGV=v_BSGV)
  checks.check_groups(dims, "k_BSGK", "q_BTHK")
  checks.check_segment_ids(segment_ids_BT)
  if dims["S"] != dims["T"]:
    raise ValueError(f"k_BSGK: expected S = T = {dims['T']} key positions (causal self-attention)"
                     f", got S={dims['S']}")
  return tuple(dims[a] for a in "BTHGK")


def _causal_mask_BTS(T, segment_ids_BT, causal=True):
  """Boolean `[B or 1, T, S]` mask: causal (all positions when not `causal`), and same document
  when segment ids are given."""
  t_T = jnp.arange(T)
  mask_1TS = (t_T[:, None] >= t_T[None, :])[None] if causal else jnp.ones((1, T, T), bool)
  if segment_ids_BT is None:
    return mask_1TS
  return mask_1TS & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])


def causal_attention_reference(q_BTHK, k_BSGK, v_BSGV, *, segment_ids_BT=None, scale=None,
                               causal=True):
  """Oracle: explicit masked softmax, `o_t = sum_s softmax_s(scale q_t.k_s) v_s` over s <= t
  (over every s of the document when not `causal`).

  Query and key lengths are equal (self-attention). Accumulates in float32 (float64 for float64
  inputs) and returns the dtype of `v_BSGV`.
  """
  B, T, H, G, K = _check_qkv(q_BTHK, k_BSGK, v_BSGV, segment_ids_BT)
  scale = K**-0.5 if scale is None else scale
  q_BTHK, k_BSGK, v_BSGV = sanitize_padding(segment_ids_BT, q_BTHK, k_BSGK, v_BSGV)
  acc = acc_dtype(q_BTHK, k_BSGK, v_BSGV)
  q_BTGRK = q_BTHK.reshape(B, T, G, H // G, K)
  logits_BGRTS = scale * jnp.einsum(
      "btgrk,bsgk->bgrts", q_BTGRK, k_BSGK, precision=HIGHEST, preferred_element_type=acc)
  mask_B11TS = _causal_mask_BTS(T, segment_ids_BT, causal)[:, None, None]
  logits_BGRTS = jnp.where(mask_B11TS, logits_BGRTS, -jnp.inf)
  probs_BGRTS = jax.nn.softmax(logits_BGRTS, axis=-1)
  o_BTGRV = jnp.einsum(
      "bgrts,bsgv->btgrv", probs_BGRTS, v_BSGV.astype(acc), precision=HIGHEST)
  return o_BTGRV.reshape(B, T, H, -1).astype(v_BSGV.dtype)


def causal_attention(q_BTHK, k_BSGK, v_BSGV, *, segment_ids_BT=None, scale=None,
                     implementation=None, causal=True):
  """Causal attention through `jax.nn.dot_product_attention` (GQA natively); bidirectional
  (every position of the document) when not `causal`, as a ViT's blocks attend.

  `implementation` is passed through (None | "xla" | "cudnn"). Segment ids become an explicit
  boolean mask (cuDNN is much slower with an explicit mask; without segment ids only
  `is_causal=True` is used). jax requires equal key and value head dims, so when V != K the
  smaller of the two is zero-padded (which changes neither logits nor outputs).
  """
  _, T, _, _, K = _check_qkv(q_BTHK, k_BSGK, v_BSGV, segment_ids_BT)
  V = v_BSGV.shape[-1]
  scale = K**-0.5 if scale is None else scale
  mask_B1TS = None
  if segment_ids_BT is not None:
    q_BTHK, k_BSGK, v_BSGV = sanitize_padding(segment_ids_BT, q_BTHK, k_BSGK, v_BSGV)
    mask_B1TS = _causal_mask_BTS(T, segment_ids_BT, causal)[:, None]
  pad_last = lambda x, n: jnp.pad(x, ((0, 0),) * 3 + ((0, n - x.shape[-1]),))
  if V < K:
    v_BSGV = pad_last(v_BSGV, K)
  elif K < V:
    q_BTHK, k_BSGK = pad_last(q_BTHK, V), pad_last(k_BSGK, V)
  o_BTHV = jax.nn.dot_product_attention(
      q_BTHK, k_BSGK, v_BSGV, mask=mask_B1TS, scale=scale, is_causal=causal,
      implementation=implementation)
  return o_BTHV[..., :V]


def attention_step(q_BHK, k_cache_BSGK, v_cache_BSGV, length_B, *, scale=None):
  """One decode step: the query attends to cache positions `s < length_B[b]`.

  The caller has already written the current token's key/value at position `length_B - 1`.
  Rows with `length_B == 0` return 0.
  """
  dims, _ = checks.check_shapes(q_BHK=q_BHK, k_cache_BSGK=k_cache_BSGK,
                                v_cache_BSGV=v_cache_BSGV, length_B=length_B)
  checks.check_floating(q_BHK=q_BHK, k_cache_BSGK=k_cache_BSGK, v_cache_BSGV=v_cache_BSGV)
  checks.check_groups(dims, "k_cache_BSGK", "q_BHK")
  B, H, K, S, G = (dims[a] for a in "BHKSG")
  scale = K**-0.5 if scale is None else scale
  acc = acc_dtype(q_BHK, k_cache_BSGK, v_cache_BSGV)
  q_BGRK = q_BHK.reshape(B, G, H // G, K)
  logits_BGRS = scale * jnp.einsum(
      "bgrk,bsgk->bgrs", q_BGRK, k_cache_BSGK, precision=HIGHEST, preferred_element_type=acc)
  valid_B11S = (jnp.arange(S)[None, :] < length_B[:, None])[:, None, None]
  return masked_softmax_read(logits_BGRS, valid_B11S, v_cache_BSGV).reshape(B, H, -1)


def masked_softmax_read(logits_BGRS, valid_BGRS, v_BSGV):
  """`softmax(logits) @ v` over valid positions; all-invalid rows give 0 (never NaN)."""
  logits_BGRS = jnp.where(valid_BGRS, logits_BGRS, -jnp.inf)
  m_BGR1 = jnp.max(logits_BGRS, axis=-1, keepdims=True)
  m_BGR1 = jnp.where(jnp.isfinite(m_BGR1), m_BGR1, 0)
  p_BGRS = jnp.exp(logits_BGRS - m_BGR1)
  l_BGR1 = jnp.sum(p_BGRS, axis=-1, keepdims=True)
  o_BGRV = jnp.einsum(
      "bgrs,bsgv->bgrv", p_BGRS, v_BSGV.astype(p_BGRS.dtype), precision=HIGHEST)
  o_BGRV = o_BGRV / jnp.where(l_BGR1 > 0, l_BGR1, 1)
  return o_BGRV.astype(v_BSGV.dtype)


def apply_rope(x_BTHK, positions_BT, theta=10000.0):
  """Rotary position embedding, half-split ("rotate_half") convention as in Llama/Gemma.

  Pair `(x[..., i], x[..., i + K/2])` is rotated by angle `position * theta^(-2i/K)`. Computed in
  float32 (float64 for float64 input); returns the dtype of `x_BTHK`.
  """
  dims, _ = checks.check_shapes(x_BTHK=x_BTHK, positions_BT=positions_BT)
  K = dims["K"]
  if K % 2:
    raise ValueError(f"x_BTHK: expected an even head dim K, got shape {tuple(x_BTHK.shape)}")
  dtype = x_BTHK.dtype
  acc = acc_dtype(x_BTHK)
  inv_freq_K = theta ** (-(jnp.arange(K, dtype=acc) % (K // 2)) * 2 / K)
  angle_BT1K = (positions_BT.astype(acc)[..., None] * inv_freq_K)[:, :, None]
  x_BTHK = x_BTHK.astype(acc)
  x1_BTHk, x2_BTHk = jnp.split(x_BTHK, 2, axis=-1)  # k = K / 2
  rotated_BTHK = jnp.concatenate([-x2_BTHk, x1_BTHk], axis=-1)
  out_BTHK = x_BTHK * jnp.cos(angle_BT1K) + rotated_BTHK * jnp.sin(angle_BT1K)
  return out_BTHK.astype(dtype)
