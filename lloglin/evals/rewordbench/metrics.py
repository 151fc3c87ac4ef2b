"""reWordBench metrics: ranking accuracy before and after a transform, its drop, and flips.

An instance is correct when r(prompt, chosen) > r(prompt, rejected); a tie is wrong. Accuracies
are micro-averages: the fraction of correct instances of a category (or of all instances), not a
mean of per-subset accuracies (RewardBench's weighted section score is not used). drop =
accuracy before - accuracy after (positive: the transform hurts); flip_rate: the fraction of
instances whose correctness changes; flip_to_wrong: the fraction correct before and wrong
after. All values are fractions in [0, 1] (drop in [-1, 1]).
"""

import numpy as np

from lloglin.evals.rewordbench.data import CATEGORIES


def correct(r_chosen: np.ndarray, r_rejected: np.ndarray) -> np.ndarray:
  return np.asarray(r_chosen) > np.asarray(r_rejected)


def summarize(categories, before, after) -> dict:
  """{"overall": row, category: row, ...} with row = {n, accuracy_before, accuracy_after, drop,
  flip_rate, flip_to_wrong}, over the instances of each category present (before / after:
  boolean correctness per instance)."""
  categories, before, after = np.asarray(categories), np.asarray(before), np.asarray(after)
  groups = {"overall": np.ones(len(before), bool)}
  groups.update({c: categories == c for c in CATEGORIES if (categories == c).any()})
  out = {}
  for name, mask in groups.items():
    b, a = before[mask], after[mask]
    out[name] = {"n": int(mask.sum()), "accuracy_before": float(b.mean()),
                 "accuracy_after": float(a.mean()), "drop": float(b.mean() - a.mean()),
                 "flip_rate": float((b != a).mean()), "flip_to_wrong": float((b & ~a).mean())}
  return out
