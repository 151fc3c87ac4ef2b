"""Pairwise outcomes -> per-image scores, and their agreement with human ratings.

Bradley-Terry with ties, read as half wins: P(i beats j) = p_i / (p_i + p_j) and a tie counts as
half a win for each image, so the log-likelihood is sum_ij w_ij log(p_i / (p_i + p_j)) with w_ij
the wins of i over j plus half their ties. This is the reading SAVOIAS-style aggregation needs
(one score per image) without the extra tie parameter of Davidson's model (Davidson 1970, JASA
65:317); both give the same ordering when ties are spread evenly. The log-likelihood (Hunter
2004, "MM algorithms for generalized Bradley-Terry models", Ann. Stat. 32:384) is concave in the
log-strengths s_i = log p_i (strictly so once a prior is added or the mean is fixed), so a damped
Newton iteration on s converges in a few steps. It is written here in numpy because no
maintained package fitting Bradley-Terry with ties is among lloglin's dependencies or in its
environment. Scores are s_i.

`prior` > 0 adds, for each image, `prior` virtual tied games against a fixed reference image of
strength 1 (log 0): the maximum-likelihood scores then exist even when an image won or lost all
its games or the comparison graph is not connected, and shrink towards 0. With prior=0 the
plain maximum-likelihood scores need every image reachable from every other through wins
(strongly connected), else ValueError.
"""

import numpy as np
import scipy.sparse.csgraph
import scipy.special
import scipy.stats


def outcome_matrix(num_items: int, pairs_N2, results_N) -> np.ndarray:
  """[num_items, num_items] float: entry (i, j) = the wins of i over j plus half their ties.

  pairs_N2: the compared (i, j) image indices; results_N: 1 (i won), 0 (j won) or 0.5 (tie)."""
  pairs_N2 = np.asarray(pairs_N2, dtype=np.int64).reshape(-1, 2)
  results_N = np.asarray(results_N, dtype=np.float64).reshape(-1)
  if len(pairs_N2) != len(results_N):
    raise ValueError(f"results: expected one result per pair ({len(pairs_N2)}), got "
                     f"{len(results_N)}")
  if len(pairs_N2) and (pairs_N2.min() < 0 or pairs_N2.max() >= num_items):
    raise ValueError(f"pairs: expected indices in [0, {num_items}), got "
                     f"{pairs_N2.min()}..{pairs_N2.max()}")
  if np.any(pairs_N2[:, 0] == pairs_N2[:, 1]):
    raise ValueError("pairs: an image compared with itself")
  if not np.all(np.isin(results_N, (0.0, 0.5, 1.0))):
    raise ValueError(f"results: expected 1 (first won), 0 (second won) or 0.5 (tie), got "
                     f"{sorted(set(results_N.tolist()) - {0.0, 0.5, 1.0})}")
  wins_II = np.zeros((num_items, num_items))
  np.add.at(wins_II, (pairs_N2[:, 0], pairs_N2[:, 1]), results_N)
  np.add.at(wins_II, (pairs_N2[:, 1], pairs_N2[:, 0]), 1.0 - results_N)
  return wins_II


def bradley_terry(wins_II, *, prior: float = 0.0, tol: float = 1e-10,
                  max_iter: int = 100) -> np.ndarray:
  """Log-strengths [I] from outcome_matrix's wins (ties as half wins; module docstring).

  prior=0: the maximum-likelihood scores, centred to mean 0; prior > 0: regularised by virtual
  ties against a reference of score 0 (not centred)."""
  wins_II = np.asarray(wins_II, dtype=np.float64)
  if wins_II.ndim != 2 or wins_II.shape[0] != wins_II.shape[1]:
    raise ValueError(f"wins: expected a square matrix, got shape {wins_II.shape}")
  if prior < 0:
    raise ValueError(f"prior: expected >= 0, got {prior}")
  if prior == 0:
    count, _ = scipy.sparse.csgraph.connected_components(wins_II > 0, connection="strong")
    if count > 1:
      raise ValueError(f"wins: the comparisons split the {len(wins_II)} images into {count} "
                       f"groups not linked by wins both ways (an image that won or lost every "
                       f"game, or unconnected images): no maximum-likelihood scores; pass "
                       f"prior > 0 (e.g. 0.1)")
  games_II = wins_II + wins_II.T
  won_I = wins_II.sum(1) + prior / 2
  centre_II = np.full(wins_II.shape, 1.0 / len(wins_II)) if prior == 0 else 0.0

  def log_likelihood(s_I):
    d_II = s_I[:, None] - s_I[None, :]
    return (-(wins_II * np.logaddexp(0, -d_II)).sum() + prior / 2 * s_I.sum()
            - prior * np.logaddexp(0, s_I).sum())

  s_I = np.zeros(len(wins_II))
  for _ in range(max_iter):
    p_II = scipy.special.expit(s_I[:, None] - s_I[None, :])  # P(i beats j)
    p_I = scipy.special.expit(s_I)  # P(i beats the reference)
    grad_I = won_I - (games_II * p_II).sum(1) - prior * p_I
    curv_II = games_II * p_II * p_II.T
    hess_II = curv_II - np.diag(curv_II.sum(1) + prior * p_I * (1 - p_I)) - centre_II
    step_I = np.linalg.solve(hess_II, -grad_I)
    t, before = 1.0, log_likelihood(s_I)
    while log_likelihood(s_I + t * step_I) < before - 1e-12 and t > 1e-8:
      t /= 2  # a damped Newton step: the log-likelihood never decreases
    s_I = s_I + t * step_I
    if np.max(np.abs(t * step_I)) < tol:
      return s_I - s_I.mean() if prior == 0 else s_I
  raise ValueError(f"bradley_terry: no convergence to tol={tol} in {max_iter} Newton steps")


def win_rate(wins_II) -> np.ndarray:
  """[I] wins (ties as half) over games played; nan for an image never compared."""
  wins_II = np.asarray(wins_II, dtype=np.float64)
  games_I = (wins_II + wins_II.T).sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(games_I > 0, wins_II.sum(1) / games_I, np.nan)


def correlations(scores, human, categories=None, *, min_items: int = 3) -> dict:
  """PLCC (Pearson) and SROCC (Spearman) of scores against human ratings, over all images
  ("all") and per category: {category: {"plcc", "srocc", "n"}}. A category with fewer than
  min_items images or a constant score gets {"n", "skipped": why} instead."""
  scores = np.asarray(scores, dtype=np.float64)
  human = np.asarray(human, dtype=np.float64)
  if scores.shape != human.shape or scores.ndim != 1:
    raise ValueError(f"scores, human: expected two 1-D arrays of one length, got shapes "
                     f"{scores.shape} and {human.shape}")
  groups = {"all": np.arange(len(scores))}
  if categories is not None:
    categories = np.asarray(categories)
    if categories.shape != scores.shape:
      raise ValueError(f"categories: expected one per image ({len(scores)}), got "
                       f"{categories.shape}")
    groups.update({str(c): np.flatnonzero(categories == c) for c in np.unique(categories)})
  out = {}
  for name, idx in groups.items():
    s, h = scores[idx], human[idx]
    if len(idx) < min_items:
      out[name] = {"n": len(idx), "skipped": f"fewer than {min_items} images"}
    elif np.ptp(s) == 0 or np.ptp(h) == 0:
      out[name] = {"n": len(idx), "skipped": "constant scores"}
    else:
      out[name] = {"plcc": float(scipy.stats.pearsonr(s, h).statistic),
                   "srocc": float(scipy.stats.spearmanr(s, h).statistic), "n": len(idx)}
  return out


def disagreements(ids, scores, human, *, top: int = 10) -> list[dict]:
  """The `top` images whose rank by principle score and by human score differ most (the paper's
  use: candidates for bias in the human annotations). Ranks are normalised to [0, 1]; the gap
  is principle rank minus human rank (> 0: the principle puts the image higher)."""
  scores = np.asarray(scores, dtype=np.float64)
  human = np.asarray(human, dtype=np.float64)
  if not len(ids) == len(scores) == len(human) >= 2:
    raise ValueError(f"ids, scores, human: expected one entry per image (>= 2), got "
                     f"{len(ids)}, {len(scores)}, {len(human)}")
  scale = len(scores) - 1
  rank_s = (scipy.stats.rankdata(scores) - 1) / scale
  rank_h = (scipy.stats.rankdata(human) - 1) / scale
  gap = rank_s - rank_h
  order = np.argsort(-np.abs(gap), kind="stable")[:top]
  return [{"id": ids[i], "score": float(scores[i]), "human": float(human[i]),
           "score_rank": float(rank_s[i]), "human_rank": float(rank_h[i]), "gap": float(gap[i])}
          for i in order]


def scores_from_records(num_items: int, records, *, prior: float = 0.0) -> dict:
  """{"bradley_terry": [I], "win_rate": [I]} from judge_pairs' records."""
  wins_II = outcome_matrix(num_items, [(r["a"], r["b"]) for r in records],
                           [{"A": 1.0, "B": 0.0, "tie": 0.5}[r["winner"]] for r in records])
  return {"bradley_terry": bradley_terry(wins_II, prior=prior), "win_rate": win_rate(wins_II)}
