"""The semantic_hub measures against hand-computed values."""

import numpy as np
import pytest

from lloglin.data import multilingual as world
from lloglin.data.tokenizers import world_tokenizer
from lloglin.evals.semantic_hub.analysis import baseline_adjusted_similarity, scaled_direction
from lloglin.evals.semantic_hub.suite import attributes


def test_eq1_equals_the_hand_computed_matrix():
  """Layer 0: cos(a_i, b_j) = [[1, r, 0], [0, r, 1], [r, 1, r]] with r = 1/sqrt(2): the pairs'
  mean (1 + sqrt 2) / 3, the six others' (2 + sqrt 2) / 6. Layer 1: identical pairs, scaled, of
  which two are opposite: 1 and -1/3. Eq. 1 ignores the vectors' lengths."""
  a = np.array([[[1, 0], [0, 1], [1, 1]], [[3, 0], [0, 3], [-3, 0]]], np.float32)
  b = np.array([[[1, 0], [1, 1], [0, 2]], [[1, 0], [0, 1], [-1, 0]]], np.float32)
  out = baseline_adjusted_similarity(a, b)
  r2 = np.sqrt(2)
  np.testing.assert_allclose(out["paired"], [(1 + r2) / 3, 1], rtol=1e-12)
  np.testing.assert_allclose(out["shuffled"], [(2 + r2) / 6, -1 / 3], rtol=1e-12)
  np.testing.assert_allclose(out["adjusted"], [r2 / 6, 4 / 3], rtol=1e-12)
  with pytest.raises(ValueError, match=r"two \[layers, N >= 2 pairs, D\] arrays of one shape"):
    baseline_adjusted_similarity(a, b[:, :2])


def test_steering_direction_is_rescaled_and_never_zero():
  np.testing.assert_allclose(scaled_direction([3.0, 4.0], 10.0), [6.0, 8.0], rtol=1e-6)
  with pytest.raises(ValueError, match="norm 0"):
    scaled_direction(np.zeros(3), 1.0)


def test_attributes_of_continuations_count_mood_language_and_form():
  tok = world_tokenizer()
  positive, negative = world.mood_pairs(1, "minor", seed=0)[0]
  dominant = world.mood_pairs(1, "dominant", seed=0)[0][1]  # two negative adjectives
  broken = " ".join(positive.split()[:3] + ["ne"])
  rows = [tok.encode(positive + " " + negative) + [tok.eos_id], tok.encode(broken + " " + dominant)]
  got = attributes(tok, rows)
  assert got["adjectives"] == 7  # 2 + 2 + 2 in the sentences, 1 in the broken one
  assert got["positive_share"] == pytest.approx(3 / 7)
  assert got["well_formed"] == pytest.approx(2 / 4)  # the dominant sentence is not minor
  assert got["minor_share"] == pytest.approx(20 / 28)
