"""NegBench metrics against hand-computed fixtures."""

import numpy as np
import pytest

from lloglin.evals.negbench.metrics import cosine, mcq_metrics, normalize, recall_at_k


def test_recall_at_k_fixture():
  sim = np.array([[0.9, 0.1, 0.5, 0.3],    # relevant 0: rank 0
                  [0.9, 0.1, 0.5, 0.3],    # relevant 1: rank 3
                  [0.2, 0.2, 0.2, 0.2],    # relevant 2: a tie ranks against the query: 3
                  [0.1, 0.7, 0.8, 0.6]])   # relevant {0, 3}: the best one ranks 2
  rel = np.zeros((4, 4), bool)
  rel[[0, 1, 2, 3, 3], [0, 1, 2, 0, 3]] = True
  assert recall_at_k(sim, rel, ks=(1, 2, 3, 4)) == {"R@1": 0.25, "R@2": 0.25, "R@3": 0.5,
                                                    "R@4": 1.0}
  with pytest.raises(ValueError, match="query 1 has no relevant image"):
    recall_at_k(sim[:2], np.eye(2, 4, dtype=bool) * [[1], [0]])


def test_mcq_metrics_fixture():
  scores = np.array([[0.9, 0.1, 0.2, 0.3],   # affirmation question, right
                     [0.1, 0.5, 0.2, 0.3],   # negation question (answer 0), picks a hybrid
                     [0.1, 0.2, 0.3, 0.8],   # negation question (answer 3), right
                     [0.4, 0.3, 0.2, 0.1]])  # hybrid question (answer 2), picks an affirmation
  types = ["affirmation", "negation", "negation", "hybrid"]
  opts = [["affirmation", "hybrid", "affirmation", "negation"],
          ["negation", "hybrid", "affirmation", "negation"],
          ["hybrid", "affirmation", "negation", "negation"],
          ["affirmation", "negation", "hybrid", "hybrid"]]
  m = mcq_metrics(scores, [0, 0, 3, 2], types, opts)
  assert m["accuracy"] == 0.5 and m["num_questions"] == 4
  assert m["per_type"] == {"affirmation": 1.0, "negation": 0.5, "hybrid": 0.0}
  assert m["count"] == {"affirmation": 1, "negation": 2, "hybrid": 1}
  assert m["chosen_type"]["negation"] == {"affirmation": 0.0, "negation": 0.5, "hybrid": 0.5}
  assert m["wrong_choice"]["negation"] == {"affirmation": 0, "negation": 0, "hybrid": 1}
  assert m["wrong_choice"]["hybrid"] == {"affirmation": 1, "negation": 0, "hybrid": 0}


def test_scores_use_normalised_embeddings():
  rng = np.random.default_rng(0)
  text, image = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
  want = np.array([[t @ i / np.linalg.norm(t) / np.linalg.norm(i) for i in image] for t in text])
  np.testing.assert_allclose(cosine(text * 100, image * 0.01), want, rtol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(normalize(image * 3), axis=1), 1.0)
  with pytest.raises(ValueError, match="finite and non-zero"):
    normalize(np.zeros((2, 3)))
