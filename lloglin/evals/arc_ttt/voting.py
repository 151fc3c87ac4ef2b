"""Voting over the candidate outputs of augmented inference (arXiv 2411.07279, section 3.3).

Candidates arrive grouped by the transform that produced them (the identity group first).
Hierarchical vote: (1) in each group, and in an extra group of all candidates, the
`per_group` most frequent grids; a group with fewer distinct grids is filled up with the
row-wise and the column-wise majority grids of its candidates; (2) over the grids every group
selected, the two most frequent, ties broken by the count in the identity group, then by the
count over all candidates, then by first appearance. Flat vote: the two most frequent
candidates (the same tie-breaks). Oracle: right when any candidate is the answer.
"""

from collections import Counter

import numpy as np

IDENTITY_GROUP = "identity"


def grid_key(grid: np.ndarray) -> tuple:
  g = np.asarray(grid)
  return g.shape, g.tobytes()


def _grid(key: tuple) -> np.ndarray:
  shape, data = key
  return np.frombuffer(data, np.int8).reshape(shape).copy()


def majority_grids(grids: list[np.ndarray]) -> list[np.ndarray]:
  """The row-wise and column-wise majority grids of the candidates with the most common shape:
  each row (column) is the most frequent row (column) at that index."""
  shapes = Counter(g.shape for g in grids)
  shape = shapes.most_common(1)[0][0]
  same = [np.asarray(g, np.int8) for g in grids if g.shape == shape]
  rows = np.stack([_most_common([g[i] for g in same]) for i in range(shape[0])])
  cols = np.stack([_most_common([g[:, j] for g in same]) for j in range(shape[1])], axis=1)
  return [rows, cols]


def _most_common(vectors: list[np.ndarray]) -> np.ndarray:
  counts = Counter(v.tobytes() for v in vectors)
  best = max(counts, key=lambda k: (counts[k], -next(i for i, v in enumerate(vectors)
                                                      if v.tobytes() == k)))
  return np.frombuffer(best, np.int8).copy()


def _ranked(keys: list[tuple], tie_counts: list[Counter]) -> list[tuple]:
  """Distinct keys, most frequent first; ties by each Counter of `tie_counts` in turn, then by
  first appearance."""
  counts = Counter(keys)
  first = {}
  for i, k in enumerate(keys):
    first.setdefault(k, i)
  return sorted(counts, key=lambda k: (-counts[k], *(-c[k] for c in tie_counts), first[k]))


def hierarchical_vote(groups: dict[str, list[np.ndarray]], *, per_group: int = 3,
                      attempts: int = 2) -> list[np.ndarray]:
  """The `attempts` answers (distinct grids, fewer only when there are fewer candidates)."""
  groups = {name: [np.asarray(g, np.int8) for g in grids] for name, grids in groups.items()
            if grids}
  everything = [g for grids in groups.values() for g in grids]
  if not everything:
    return []
  identity = Counter(grid_key(g) for g in groups.get(IDENTITY_GROUP, []))
  overall = Counter(grid_key(g) for g in everything)
  selected = []
  for grids in list(groups.values()) + [everything]:
    keys = [grid_key(g) for g in grids]
    top = _ranked(keys, [identity, overall])[:per_group]
    if len(top) < per_group:
      for extra in map(grid_key, majority_grids(grids)):
        if extra not in top and len(top) < per_group:
          top.append(extra)
    selected += top
  return [_grid(k) for k in _ranked(selected, [identity, overall])[:attempts]]


def flat_vote(groups: dict[str, list[np.ndarray]], *, attempts: int = 2) -> list[np.ndarray]:
  everything = [grid_key(g) for grids in groups.values() for g in grids]
  identity = Counter(grid_key(g) for g in groups.get(IDENTITY_GROUP, []))
  return [_grid(k) for k in _ranked(everything, [identity])[:attempts]]


def contains(grids: list[np.ndarray], answer: np.ndarray) -> bool:
  key = grid_key(np.asarray(answer, np.int8))
  return any(grid_key(g) == key for g in grids)


def vote_counts(groups: dict[str, list[np.ndarray]]) -> dict[str, list[dict]]:
  """For the report: each group's distinct candidates (as lists) with their counts."""
  out = {}
  for name, grids in groups.items():
    counts = Counter(grid_key(np.asarray(g, np.int8)) for g in grids)
    out[name] = [{"grid": _grid(k).tolist(), "count": n} for k, n in counts.most_common()]
  return out
