"""User scorers the tests name in configs ("tests.evals.rewordbench.scorers:<name>")."""

import numpy as np


def length_scorer(prompts: list[str], responses: list[str]) -> np.ndarray:
  """The response's length in characters: a reward model that only likes long answers."""
  del prompts
  return np.array([len(r) for r in responses], np.float64)
