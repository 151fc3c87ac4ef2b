"""The log-linear (Fenwick) hierarchy and document layout shared by every mixer op.

Level of a (query t, source s <= t) pair, positions counted inside the document
(docs/algorithms/loglinear.md#fenwick-levels):

    level(t, s) = bit_length(t XOR s)          (0 <=> s == t)

Query t reads level l >= 1 iff bit (l - 1) of t is 1, from the bucket [t' - 2^(l-1), t') with
t' = t - (t mod 2^(l-1)). A sequence of T tokens needs `num_levels(T) = ceil(log2 T) + 1` levels;
a state with L levels serves positions 0 .. 2^(L-1) - 1.

Decode keeps one state per level (`FenwickState`) and, before token t > 0, applies the carry rule
(docs/algorithms/loglinear.md#decode): z = ctz(t); S^(z+1) <- sum_{l <= z} S^(l); S^(0..z) <- 0.

The chunked forms run one masked linear recurrence ("stream") per level l: the state is reset
where position mod 2^l == 0, written in the even half of each 2^l block and read (with lambda^l)
in the odd half. After token t the stream state is bucket l of t when t is in the odd half, and
the sum of the Fenwick levels below l otherwise; `fenwick_to_level_streams` and
`level_streams_to_fenwick` convert between the two.

Packed sequences: `segment_ids_BT` numbers documents from 1 within a row, 0 marks padding. A
document starts at every real token whose id differs from the previous token's; the state resets
there. Padding tokens leave the state (and the step count) untouched and output 0. An initial
state continues the document found at t = 0.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax


class FenwickState(NamedTuple):
  """Log-linear decode state: one [K, V] state per level, and the tokens seen in the document.

  S_BHLKV: float32 (float64 for float64 inputs); level 0 holds the last token alone.
  t_B: int32, number of tokens of the current document already processed (the position of the
    next token).
  """
  S_BHLKV: jax.Array
  t_B: jax.Array


def fenwick_zeros(batch, heads, levels, k_dim, v_dim, dtype=jnp.float32):
  """An empty FenwickState (start of a document)."""
  return FenwickState(
      jnp.zeros((batch, heads, levels, k_dim, v_dim), dtype), jnp.zeros((batch,), jnp.int32))


def num_levels(seq_len: int) -> int:
  """Levels needed by positions 0 .. seq_len - 1: ceil(log2 seq_len) + 1 (1 for seq_len = 1)."""
  if seq_len < 1:
    raise ValueError(f"seq_len: expected a positive length, got {seq_len}")
  return (seq_len - 1).bit_length() + 1


def capacity(levels: int) -> int:
  """Number of positions a hierarchy of `levels` levels serves (2^(levels-1))."""
  return 1 << (levels - 1)


def bit_length(x):
  """bit_length of non-negative int32 values (0 -> 0)."""
  x = jnp.asarray(x, jnp.int32)
  return 32 - lax.clz(x)


def level_index(t, s):
  """Level of (query t, source s): bit_length(t XOR s); broadcasts."""
  t = jnp.asarray(t, jnp.int32)
  s = jnp.asarray(s, jnp.int32)
  return bit_length(jnp.bitwise_xor(t, s))


def level_lut(chunk_size: int):
  """[C, C] int32 table LUT[i, j] = bit_length(i XOR j) (fla `level_lut`)."""
  idx = jnp.arange(chunk_size, dtype=jnp.int32)
  return level_index(idx[:, None], idx[None, :])


def level_matrix(seq_len: int):
  """[T, T] int32 level of every (t, s) pair of one document; -1 above the diagonal (s > t)."""
  idx = jnp.arange(seq_len, dtype=jnp.int32)
  lvl = level_index(idx[:, None], idx[None, :])
  return jnp.where(idx[None, :] <= idx[:, None], lvl, -1)


def fenwick_carry(S_BHLKV, t_B):
  """Carry rule applied before processing token t (identity at t = 0).

  z = ctz(t); S^(z+1) <- sum_{l <= z + 1} S^(l); S^(0..z) <- 0. S^(z+1) is empty before the carry,
  so the sum equals the carry rule of the module docstring. When z + 1 >= L the merged state has no
  level to go to: callers must treat t >= capacity(L) as an overflow (`fenwick_overflow`).
  """
  L = S_BHLKV.shape[2]
  t_B = jnp.asarray(t_B, jnp.int32)
  lowbit = jnp.bitwise_and(t_B, -t_B)                  # 0 for t = 0
  target_B = bit_length(lowbit)                        # z + 1 (0 for t = 0: identity)
  lv = jnp.arange(L, dtype=jnp.int32)
  row = lv[None, :, None]                              # destination level
  col = lv[None, None, :]                              # source level
  tgt = target_B[:, None, None]
  carry_BLL = jnp.where(row == tgt, col <= tgt, (row == col) & (row > tgt))
  return jnp.einsum('blm,bhmkv->bhlkv', carry_BLL.astype(S_BHLKV.dtype), S_BHLKV,
                    precision=lax.Precision.HIGHEST)


def fenwick_overflow(t_B, levels: int):
  """True where position t needs more than `levels` levels."""
  return jnp.asarray(t_B, jnp.int32) >= capacity(levels)


def bucket_representative(t_B, levels: int):
  """[B, L] one source position inside bucket l of query t (clipped; only meaningful where bucket
  l of t is non-empty: level 0 always, level l >= 1 iff bit l-1 of t is 1).

  All sources of a bucket share their level with respect to any later query, so the level of
  bucket l of (t0 - 1) seen from query p >= t0 is level_index(p, representative).
  """
  t = jnp.asarray(t_B, jnp.int32)[:, None]
  lv = jnp.arange(levels, dtype=jnp.int32)[None, :]
  half = jnp.left_shift(1, jnp.maximum(lv - 1, 0))
  start = t - jnp.bitwise_and(t, half - 1)             # t' = t - (t mod 2^(l-1))
  return jnp.where(lv == 0, t, start - 1)


def fenwick_to_level_streams(S_BHLKV, t_B):
  """[L, B, H, K, V] level-stream states after position t-1 from the Fenwick state at step t.

  stream l = F^l if bit (l-1) of (t-1) is 1 else sum_{l' < l} F^l' (level 0: F^0).
  """
  L = S_BHLKV.shape[2]
  p_B = jnp.asarray(t_B, jnp.int32) - 1
  lv = jnp.arange(L, dtype=jnp.int32)
  odd_BL = (lv[None, :] == 0) | (
      jnp.bitwise_and(jnp.right_shift(p_B[:, None], jnp.maximum(lv - 1, 0)[None, :]), 1) == 1)
  row = lv[None, :, None]
  col = lv[None, None, :]
  mix_BLL = jnp.where(odd_BL[:, :, None], row == col, col < row)
  return jnp.einsum('blm,bhmkv->lbhkv', mix_BLL.astype(S_BHLKV.dtype), S_BHLKV,
                    precision=lax.Precision.HIGHEST)


def level_streams_to_fenwick(S_LBHKV, t_B):
  """Fenwick state at step t from the level-stream states after position t - 1 (inverse above)."""
  L = S_LBHKV.shape[0]
  p_B = jnp.asarray(t_B, jnp.int32) - 1
  lv = jnp.arange(L, dtype=jnp.int32)
  keep_LB = (lv[:, None] == 0) | (
      jnp.bitwise_and(jnp.right_shift(p_B[None, :], jnp.maximum(lv - 1, 0)[:, None]), 1) == 1)
  S_LBHKV = jnp.where(keep_LB[:, :, None, None, None], S_LBHKV, 0)
  return jnp.moveaxis(S_LBHKV, 0, 2)


class DocumentLayout(NamedTuple):
  """Per-token document structure of a [B, T] batch (see module docstring).

  real_BT: token is not padding. start_BT: a document starts here (state reset; never at t = 0).
  doc_BT: index of the document within the row (0 = the one continuing the initial state).
  pos_BT: position inside the document (counting real tokens, offset by t0 for document 0);
    padding repeats the position of the previous real token.
  count_B: tokens of the last document after the row (the FenwickState step count).
  """
  real_BT: jax.Array
  start_BT: jax.Array
  doc_BT: jax.Array
  pos_BT: jax.Array
  count_B: jax.Array


def document_layout(segment_ids_BT, t0_B=None):
  """DocumentLayout of int segment ids [B, T] (documents from 1, 0 = padding)."""
  seg = jnp.asarray(segment_ids_BT, jnp.int32)
  B, _ = seg.shape
  t0_B = jnp.zeros((B,), jnp.int32) if t0_B is None else jnp.asarray(t0_B, jnp.int32)
  real = seg != 0
  prev = jnp.pad(seg, ((0, 0), (1, 0)))[:, :-1]
  start = real & (seg != prev)
  start = start.at[:, 0].set(False)
  doc = jnp.cumsum(start, axis=1, dtype=jnp.int32)
  seen = jnp.cumsum(real, axis=1, dtype=jnp.int32)          # real tokens in [0, t]
  base = lax.cummax(jnp.where(start, seen - 1, -t0_B[:, None]), axis=1)
  count = seen - base                                        # real tokens of the document so far
  return DocumentLayout(real, start, doc, count - 1, count[:, -1])


def dense_segment_ids(batch: int, seq_len: int, padded_len: int | None = None):
  """Segment ids of unpacked rows: one document of seq_len tokens, padding up to padded_len."""
  padded_len = seq_len if padded_len is None else padded_len
  ids = (jnp.arange(padded_len) < seq_len).astype(jnp.int32)
  return jnp.broadcast_to(ids, (batch, padded_len))


def segment_ids_from_cu_seqlens(cu_seqlens, seq_len: int):
  """[1, T] segment ids from cumulative sequence lengths [0, l0, l0+l1, ...] (fla varlen form)."""
  cu = jnp.asarray(cu_seqlens, jnp.int32)
  idx = jnp.arange(seq_len, dtype=jnp.int32)
  ids = jnp.searchsorted(cu[1:], idx, side='right').astype(jnp.int32) + 1
  return jnp.where(idx < cu[-1], ids, 0)[None, :]


def level_stream_masks(pos_BT, real_BT, levels: Sequence[int]):
  """(reset, write, read) [X, B, T] bool masks of the level streams `levels` (see module doc)."""
  lv = jnp.asarray(levels, jnp.int32)[:, None, None]
  period = jnp.left_shift(1, lv)
  half = jnp.right_shift(period, 1)                          # 0 for level 0
  pos = pos_BT[None]
  reset = real_BT[None] & (jnp.bitwise_and(pos, period - 1) == 0)
  odd = jnp.bitwise_and(pos, half) != 0
  return reset, real_BT[None] & ~odd, real_BT[None] & odd


def same_document_pairs(doc_BT, real_BT):
  """[B, T, T] bool: s <= t, both real, same document (the causal document mask)."""
  t = jnp.arange(doc_BT.shape[1])
  return ((doc_BT[:, :, None] == doc_BT[:, None, :]) & real_BT[:, :, None] & real_BT[:, None, :]
          & (t[None, None, :] <= t[None, :, None]))


def pair_levels(pos_BT, doc_BT, real_BT, levels: int):
  """[B, T, T] level of each causal same-document (t, s) pair; -1 elsewhere and at levels >= L."""
  lvl = level_index(pos_BT[:, :, None], pos_BT[:, None, :])
  return jnp.where(same_document_pairs(doc_BT, real_BT) & (lvl < levels), lvl, -1)
