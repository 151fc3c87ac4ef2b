"""Property: packing any document layout into windows keeps each token a target once, and the
segment ids, positions and loss mask follow the document starts (lloglin/data/text.py)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lloglin.data.text import TextWindows


@settings(max_examples=60, deadline=None)
@given(doc_lengths=st.lists(st.integers(1, 9), min_size=1, max_size=12),
       seq_len=st.integers(1, 8))
def test_windows_follow_the_document_starts(doc_lengths, seq_len):
  n = sum(doc_lengths)
  doc_starts = np.cumsum([0] + doc_lengths[:-1])
  windows = TextWindows(np.arange(n, dtype=np.uint16), doc_starts, seq_len, "tokens")
  if n < seq_len + 1:
    assert windows.num_items == 0
    return
  rows = windows.rows(np.arange(windows.num_items))
  # The token value is its offset in the stream: windows tile it, every token after the first is
  # a target exactly once (up to the last full window).
  stream = np.arange(windows.num_items * seq_len + 1)
  np.testing.assert_array_equal(rows["inputs"].ravel(), stream[:-1])
  np.testing.assert_array_equal(rows["targets"].ravel(), stream[1:])
  starts = np.isin(rows["inputs"], doc_starts)
  starts[:, 0] = True  # each row restarts its first document
  np.testing.assert_array_equal(rows["segment_ids"], np.cumsum(starts, axis=1))
  run_start = np.maximum.accumulate(np.where(starts, np.arange(seq_len), 0), axis=1)
  np.testing.assert_array_equal(rows["positions"], np.arange(seq_len) - run_start)
  np.testing.assert_array_equal(rows["loss_mask"], ~np.isin(rows["targets"], doc_starts))
