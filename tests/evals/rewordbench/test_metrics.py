"""Micro-averaged accuracy, drop and flip rates against a hand-computed fixture; the evaluator on
the identity transform."""

import numpy as np
import pytest

from lloglin.evals.rewordbench.data import load_records
from lloglin.evals.rewordbench.metrics import correct, summarize
from lloglin.evals.rewordbench.suite import evaluate
from lloglin.evals.rewordbench.transforms import FIELDS, Transform
from tests.evals.rewordbench.conftest import FIXTURE
from tests.evals.rewordbench.scorers import length_scorer


def test_a_tie_is_wrong():
  assert correct([1.0, 2.0, 0.5], [1.0, 1.0, 0.7]).tolist() == [False, True, False]


def test_micro_averages_and_flip_rates_by_hand():
  categories = ["Chat", "Chat", "Chat Hard", "Safety", "Safety", "Reasoning"]
  before = [True, True, False, True, False, True]
  after = [True, False, True, False, False, True]
  m = summarize(categories, before, after)
  row = lambda n, b, a, flip, to_wrong: {"n": n, "accuracy_before": b, "accuracy_after": a,
                                         "drop": pytest.approx(b - a), "flip_rate": flip,
                                         "flip_to_wrong": to_wrong}
  assert m == {"overall": row(6, 4 / 6, 3 / 6, 3 / 6, 2 / 6),
               "Chat": row(2, 1.0, 0.5, 0.5, 0.5), "Chat Hard": row(1, 0.0, 1.0, 1.0, 0.0),
               "Safety": row(2, 0.5, 0.0, 0.5, 0.5), "Reasoning": row(1, 1.0, 1.0, 0.0, 0.0)}
  # micro: over instances, not the mean of the categories' accuracies (0.625)
  assert m["overall"]["accuracy_before"] != np.mean([m[c]["accuracy_before"] for c in
                                                     ("Chat", "Chat Hard", "Safety", "Reasoning")])


def test_the_identity_transform_gives_zero_drop():
  identity = Transform("identity", "controlled", FIELDS, None, lambda text, rng, subset: text,
                       "the text unchanged")
  records = load_records(str(FIXTURE))
  results = evaluate(records, [identity], length_scorer, seed=0, batch_size=5)
  metrics = results["transforms"]["identity"]["metrics"]
  assert metrics == results["original"]
  assert all(m["drop"] == 0 and m["flip_rate"] == 0 for m in metrics.values())
  expected = np.mean([len(r["chosen"]) > len(r["rejected"]) for r in records])
  assert metrics["overall"]["accuracy_before"] == pytest.approx(expected) and 0 < expected < 1
