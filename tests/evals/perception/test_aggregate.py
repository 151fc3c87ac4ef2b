"""Bradley-Terry with ties, win rate, correlations and the disagreement report."""

import numpy as np
import pytest
import scipy.stats

from lloglin.evals.perception import aggregate
from lloglin.evals.perception.principles import PRINCIPLES, pairwise_prompt


def test_bradley_terry_hand_computed():
  # A beats B twice, B beats A once, one tie: W_A = 2.5, W_B = 1.5 of n = 4 games; the MLE has
  # p_A / (p_A + p_B) = 2.5 / 4, so log p_A - log p_B = log(5 / 3), centred to +-log(5/3) / 2.
  wins = aggregate.outcome_matrix(2, [(0, 1), (0, 1), (1, 0), (0, 1)], [1, 1, 1, 0.5])
  np.testing.assert_array_equal(wins, [[0, 2.5], [1.5, 0]])
  scores = aggregate.bradley_terry(wins)
  np.testing.assert_allclose(scores, [np.log(5 / 3) / 2, -np.log(5 / 3) / 2], rtol=1e-9)
  np.testing.assert_allclose(aggregate.win_rate(wins), [2.5 / 4, 1.5 / 4])


def test_bradley_terry_stationary_and_prior():
  rng = np.random.default_rng(0)
  true = np.linspace(-1.5, 1.5, 6)
  pairs = np.array([(i, j) for i in range(6) for j in range(6) if i < j] * 8)
  p_first = 1 / (1 + np.exp(true[pairs[:, 1]] - true[pairs[:, 0]]))
  u = rng.random(len(pairs))
  results = np.where(u < 0.1, 0.5, (u < p_first).astype(float))
  wins = aggregate.outcome_matrix(6, pairs, results)
  s = aggregate.bradley_terry(wins)
  p = np.exp(s)
  games = wins + wins.T
  grad = wins.sum(1) - (games * p[:, None] / (p[:, None] + p[None, :])).sum(1)
  np.testing.assert_allclose(grad, 0, atol=1e-7)  # the log-likelihood's gradient vanishes
  assert scipy.stats.spearmanr(s, true).statistic > 0.9
  shrunk = aggregate.bradley_terry(wins, prior=5.0)
  assert np.ptp(shrunk) < np.ptp(s)


def test_bradley_terry_needs_prior_when_unbeaten():
  wins = aggregate.outcome_matrix(3, [(0, 1), (1, 2)], [1, 1])
  with pytest.raises(ValueError, match="prior > 0"):
    aggregate.bradley_terry(wins)
  s = aggregate.bradley_terry(wins, prior=0.5)
  assert s[0] > s[1] > s[2]
  with pytest.raises(ValueError, match="results"):
    aggregate.outcome_matrix(3, [(0, 1)], [2])


def test_correlations_match_scipy():
  rng = np.random.default_rng(1)
  human = rng.normal(size=12)
  scores = human + rng.normal(size=12)
  cats = np.array(["ads"] * 6 + ["art"] * 4 + ["tiny"] * 2)
  out = aggregate.correlations(scores, human, cats)
  for name, idx in (("all", slice(None)), ("ads", slice(0, 6)), ("art", slice(6, 10))):
    assert out[name]["plcc"] == pytest.approx(scipy.stats.pearsonr(scores[idx], human[idx])[0])
    assert out[name]["srocc"] == pytest.approx(scipy.stats.spearmanr(scores[idx], human[idx])[0])
  assert out["tiny"] == {"n": 2, "skipped": "fewer than 3 images"}


def test_disagreements_rank_gap():
  out = aggregate.disagreements(["a", "b", "c", "d"], [1, 2, 3, 4], [4, 2, 3, 1], top=2)
  assert {o["id"] for o in out} == {"a", "d"}
  assert [o["gap"] for o in out] == [-1.0, 1.0]


def test_prompts_name_each_principle():
  assert len(PRINCIPLES) == 8
  for name, p in PRINCIPLES.items():
    text = pairwise_prompt(name)
    assert p.definition in text and p.question in text and '"winner"' in text
  with pytest.raises(ValueError, match="unknown principle 'colour'"):
    pairwise_prompt("colour")
