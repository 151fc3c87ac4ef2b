"""lloglin.ops.hierarchy: level index, level count, LUT, carry rule, level streams, documents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lloglin.ops import hierarchy

T_MAX = 1024


def fla_level_matrix(T):
  """fla's interval formula (docs/algorithms/loglinear.md#fenwick-levels), vectorised over all
  (t, s): query t reads level l >= 1 iff bit l-1 of t is 1, from [t' - 2^(l-1), t') with
  t' = t - (t mod 2^(l-1)); level 0 is the diagonal; -1 above the diagonal."""
  t = np.arange(T)[:, None]
  s = np.arange(T)[None, :]
  out = np.where(s == t, 0, -1)
  for level in range(1, T.bit_length() + 1):
    half = 1 << (level - 1)
    hi = t - t % half
    inside = ((t >> (level - 1)) & 1 == 1) & (s >= hi - half) & (s < hi)
    assert not np.any(inside & (out != -1)), 'buckets overlap'
    out = np.where(inside, level, out)
  return out


def test_level_index_matches_fla_interval_formula():
  """Levels do not depend on T, so the 1024 x 1024 matrix covers every T <= 1024."""
  ref = fla_level_matrix(T_MAX)
  assert np.all(ref[np.tril_indices(T_MAX)] >= 0), 'buckets do not cover s <= t'
  np.testing.assert_array_equal(np.asarray(hierarchy.level_matrix(T_MAX)), ref)


def test_num_levels_is_the_largest_level_plus_one():
  lvl = fla_level_matrix(T_MAX)
  largest = np.maximum.accumulate(lvl.max(axis=1))          # largest level among t < T
  for T in range(1, T_MAX + 1):
    assert hierarchy.num_levels(T) == largest[T - 1] + 1, T
    assert hierarchy.capacity(hierarchy.num_levels(T)) >= T
  assert [hierarchy.num_levels(T) for T in (1, 2, 3, 256, 257, 16384)] == [1, 2, 3, 9, 10, 15]
  with pytest.raises(ValueError, match='seq_len'):
    hierarchy.num_levels(0)


@pytest.mark.parametrize('C', [16, 32, 64])
def test_level_lut_is_chunk_local(C):
  """Inside a C-aligned chunk level(t, s) = LUT[t mod C, s mod C] (fla level_lut)."""
  lut = np.asarray(hierarchy.level_lut(C))
  lvl = np.asarray(hierarchy.level_matrix(4 * C))
  for c in range(4):
    block = lvl[c * C:(c + 1) * C, c * C:(c + 1) * C]
    np.testing.assert_array_equal(block, np.where(np.tri(C, dtype=bool), lut, -1))
  assert lut.max() == C.bit_length() - 1


def _fenwick_sets(T, L):
  """Sources held by each level after every token: run fenwick_carry on indicator states
  (K = source index, V = 1): state after token t, [T, L, T]."""
  def body(S_BHLKV, t):
    S = hierarchy.fenwick_carry(S_BHLKV, t[None])
    S = S.at[0, 0, 0].set(jax.nn.one_hot(t, T)[:, None])
    return S, S[0, 0, :, :, 0]
  _, sets = lax.scan(body, jnp.zeros((1, 1, L, T, 1)), jnp.arange(T, dtype=jnp.int32))
  return np.asarray(sets)


def test_carry_rule_reproduces_the_buckets():
  """After token t, level l of the carry-rule state holds exactly {s : level(t, s) = l}."""
  T, L = 300, hierarchy.num_levels(300)
  sets = _fenwick_sets(T, L)
  lvl = np.asarray(hierarchy.level_matrix(T))
  expected = (lvl[:, None, :] == np.arange(L)[None, :, None]).astype(np.float32)
  np.testing.assert_array_equal(sets, expected)
  assert not np.any(np.asarray(hierarchy.fenwick_overflow(jnp.arange(T), L)))
  assert bool(hierarchy.fenwick_overflow(hierarchy.capacity(L), L))


def test_level_streams_convert_to_and_from_fenwick():
  """Stream l after position t-1 = sources in the even half of t-1's 2^l block (= bucket l when
  t-1 is in the odd half); the conversions match this and invert each other."""
  T, L = 300, hierarchy.num_levels(300)
  sets = _fenwick_sets(T, L)                                 # Fenwick state after token t-1 = t
  t_B = np.arange(1, T + 1, dtype=np.int32)
  F_BHLKV = jnp.asarray(sets)[:, None, :, :, None]
  streams = np.asarray(hierarchy.fenwick_to_level_streams(F_BHLKV, t_B))[..., 0]   # [L,B,1,T]
  p = t_B[:, None] - 1
  s = np.arange(T)[None, :]
  for level in range(L):
    block = p >> level
    even = (s >> level == block) & (((s >> max(level - 1, 0)) & 1) == 0 if level else s == p)
    np.testing.assert_array_equal(streams[level, :, 0], (even & (s <= p)).astype(np.float32),
                                  err_msg=f'level {level}')
  back = hierarchy.level_streams_to_fenwick(jnp.asarray(streams)[..., None], t_B)
  np.testing.assert_array_equal(np.asarray(back), np.asarray(F_BHLKV))


def test_bucket_representative_gives_the_level_of_its_bucket():
  """Every source of bucket l of t0 - 1 has the same level w.r.t. each later query p, and
  level_index(p, representative) is that level."""
  T, L = 200, hierarchy.num_levels(200)
  lvl = np.asarray(hierarchy.level_matrix(T))
  rep = np.asarray(hierarchy.bucket_representative(jnp.arange(T, dtype=jnp.int32), L))  # [T, L]
  rep_lvl = np.asarray(hierarchy.level_index(jnp.arange(T)[None, :, None], rep[:, None, :]))
  for t in range(T - 1):                                     # t = t0 - 1
    for level in range(L):
      bucket = np.flatnonzero(lvl[t] == level)
      if bucket.size == 0:
        continue
      assert rep[t, level] in bucket
      later = lvl[t + 1:, bucket]
      assert np.all(later.min(axis=1) == later.max(axis=1))
      np.testing.assert_array_equal(rep_lvl[t, t + 1:, level], later[:, 0])


def test_document_layout():
  seg = jnp.asarray([[1, 1, 2, 2, 2, 0, 0, 3],
                     [0, 0, 1, 1, 0, 1, 2, 2]], jnp.int32)
  lay = hierarchy.document_layout(seg, jnp.asarray([5, 0], jnp.int32))
  np.testing.assert_array_equal(lay.real_BT, np.asarray(seg) != 0)
  np.testing.assert_array_equal(lay.start_BT, [[0, 0, 1, 0, 0, 0, 0, 1],
                                               [0, 0, 1, 0, 0, 1, 1, 0]])
  np.testing.assert_array_equal(lay.doc_BT, [[0, 0, 1, 1, 1, 1, 1, 2],
                                             [0, 0, 1, 1, 1, 2, 3, 3]])
  pos = np.asarray(lay.pos_BT)
  np.testing.assert_array_equal(pos[0][[0, 1, 2, 3, 4, 7]], [5, 6, 0, 1, 2, 0])
  np.testing.assert_array_equal(pos[1][[2, 3, 5, 6, 7]], [0, 1, 0, 0, 1])
  np.testing.assert_array_equal(lay.count_B, [1, 2])
  np.testing.assert_array_equal(
      hierarchy.segment_ids_from_cu_seqlens(jnp.asarray([0, 1, 4, 6]), 8),
      [[1, 2, 2, 2, 3, 3, 0, 0]])


def test_level_stream_masks():
  pos = jnp.arange(16, dtype=jnp.int32)[None]
  reset, write, read = map(np.asarray, hierarchy.level_stream_masks(
      pos, jnp.ones((1, 16), bool), [0, 1, 3]))
  assert reset[0].all() and write[0].all() and not read[0].any()
  np.testing.assert_array_equal(np.flatnonzero(reset[1, 0]), np.arange(0, 16, 2))
  np.testing.assert_array_equal(np.flatnonzero(read[1, 0]), np.arange(1, 16, 2))
  np.testing.assert_array_equal(np.flatnonzero(reset[2, 0]), [0, 8])
  np.testing.assert_array_equal(np.flatnonzero(write[2, 0]), [0, 1, 2, 3, 8, 9, 10, 11])
