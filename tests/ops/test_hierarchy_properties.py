"""Properties of lloglin.ops.hierarchy on random inputs: levels at int32-scale positions, and the
document layout of random packed rows against a token-by-token oracle."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lloglin.ops import hierarchy


def bucket_level(t: int, s: int) -> int:
  """The level whose bucket of query t holds source s <= t (fla's interval formula): level 0 is
  {t}; level l >= 1 exists iff bit l-1 of t is 1 and is [t' - 2^(l-1), t'), t' = t - t mod 2^(l-1).
  Asserts that exactly one bucket holds s (the buckets partition [0, t])."""
  levels = [0] if s == t else []
  for level in range(1, t.bit_length() + 1):
    half = 1 << (level - 1)
    hi = t - t % half
    if (t >> (level - 1)) & 1 and hi - half <= s < hi:
      levels.append(level)
  assert len(levels) == 1, (t, s, levels)
  return levels[0]


@settings(max_examples=50, deadline=None)
@given(pairs=st.lists(st.integers(0, 2**31 - 1).flatmap(
    lambda t: st.tuples(st.just(t), st.integers(0, t))), min_size=32, max_size=32))
def test_level_index_is_the_bucket_level_up_to_int32_positions(pairs):
  t_N, s_N = (np.asarray(x, np.int64) for x in zip(*pairs))
  levels = np.asarray(hierarchy.level_index(t_N.astype(np.int32), s_N.astype(np.int32)))
  assert levels.tolist() == [bucket_level(t, s) for t, s in pairs]


def layout_oracle(seg_T, t0):
  """Token by token: a document starts at a real token whose id differs from the previous
  token's (t > 0); positions count the document's real tokens from t0 (document 0) or 0;
  padding repeats the previous position."""
  doc, pos = 0, t0 - 1
  start_T, doc_T, pos_T = [], [], []
  for t, s in enumerate(seg_T):
    start = bool(s) and t > 0 and s != seg_T[t - 1]
    if start:
      doc, pos = doc + 1, -1
    pos += bool(s)
    start_T.append(start)
    doc_T.append(doc)
    pos_T.append(pos)
  return start_T, doc_T, pos_T, pos + 1


@settings(max_examples=40, deadline=None)
@given(seg_BT=hnp.arrays(np.int32, (3, 16), elements=st.integers(0, 3)),  # one shape: one compile
       t0_B=hnp.arrays(np.int32, (3,), elements=st.integers(0, 40)))
def test_document_layout_matches_a_token_by_token_oracle(seg_BT, t0_B):
  layout = hierarchy.document_layout(seg_BT, t0_B)
  for b in range(seg_BT.shape[0]):
    start_T, doc_T, pos_T, count = layout_oracle(seg_BT[b].tolist(), int(t0_B[b]))
    assert np.asarray(layout.real_BT[b]).tolist() == (seg_BT[b] != 0).tolist()
    assert np.asarray(layout.start_BT[b]).tolist() == start_T
    assert np.asarray(layout.doc_BT[b]).tolist() == doc_T
    assert np.asarray(layout.pos_BT[b]).tolist() == pos_T
    assert int(layout.count_B[b]) == count
