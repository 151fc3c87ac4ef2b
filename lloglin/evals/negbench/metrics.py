"""NegBench metrics on embeddings: cosine scores of L2-normalised embeddings (the official code's
March 2025 fix added the normalisation), text-to-image Recall@k, and MCQ accuracy per question
type with the types of the options chosen (docs/suites/negbench.md#metrics)."""

from typing import Sequence

import numpy as np

from lloglin.data.negbench import QUESTION_TYPES


def normalize(x_ND: np.ndarray, *, what: str = "embeddings") -> np.ndarray:
  """Rows scaled to unit L2 norm (float64); a zero or non-finite row is an error."""
  x = np.asarray(x_ND, np.float64)
  if x.ndim != 2:
    raise ValueError(f"{what}: expected a [num, dim] array, got shape {x.shape}")
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  if not np.isfinite(x).all() or (norm == 0).any():
    raise ValueError(f"{what}: every embedding must be finite and non-zero")
  return x / norm


def cosine(text_QD: np.ndarray, image_ND: np.ndarray) -> np.ndarray:
  """[Q, N] cosine similarity of every text to every image."""
  return normalize(text_QD, what="text embeddings") @ normalize(image_ND,
                                                                what="image embeddings").T


def recall_at_k(sim_QN: np.ndarray, relevant_QN: np.ndarray, ks: Sequence[int] = (1, 5, 10)
                ) -> dict[str, float]:
  """{"R@k": fraction of queries with a relevant image among the k most similar}; ties are
  broken against the query (an image ranks above the relevant one when their scores are equal),
  so a constant model scores no better than chance."""
  sim, rel = np.asarray(sim_QN), np.asarray(relevant_QN, bool)
  if sim.shape != rel.shape or sim.ndim != 2:
    raise ValueError(f"sim_QN {sim.shape} and relevant_QN {rel.shape}: expected equal "
                     f"[queries, images] shapes")
  if not rel.any(1).all():
    raise ValueError(f"relevant_QN: query {int(np.argmin(rel.any(1)))} has no relevant image")
  best_rel_Q = np.where(rel, sim, -np.inf).max(1)
  # rank of the best relevant image: images scoring at least as high that are not relevant
  rank_Q = ((sim >= best_rel_Q[:, None]) & ~rel).sum(1)
  return {f"R@{k}": float((rank_Q < k).mean()) for k in ks}


def mcq_metrics(scores_QC: np.ndarray, answer_Q: Sequence[int], types_Q: Sequence[str],
                option_types_QC: Sequence[Sequence[str]]) -> dict:
  """Accuracy overall and per question type (the correct option's type), the types of the options
  chosen per question type ("chosen_type": fractions; the paper's template-selection frequency)
  and, among the wrong answers, which type was chosen ("wrong_choice": counts). The chosen option
  is the highest score (the first of equal ones)."""
  scores = np.asarray(scores_QC, np.float64)
  answer = np.asarray(answer_Q, np.int64)
  if scores.ndim != 2 or answer.shape != (len(scores),) or len(types_Q) != len(scores):
    raise ValueError(f"scores_QC {scores.shape}, answer_Q {answer.shape}, types_Q "
                     f"({len(types_Q)}): expected [Q, C], [Q], [Q]")
  chosen = scores.argmax(1)
  correct = chosen == answer
  result = {"accuracy": float(correct.mean()) if len(correct) else float("nan"),
            "num_questions": len(correct), "per_type": {}, "count": {}, "chosen_type": {},
            "wrong_choice": {}}
  chosen_type = np.array([option_types_QC[q][c] for q, c in enumerate(chosen)], dtype=object)
  types = np.array(types_Q, dtype=object)
  for t in QUESTION_TYPES:
    mine = types == t
    n = int(mine.sum())
    result["count"][t] = n
    result["per_type"][t] = float(correct[mine].mean()) if n else float("nan")
    result["chosen_type"][t] = {u: float((chosen_type[mine] == u).mean()) if n else float("nan")
                                for u in QUESTION_TYPES}
    wrong = mine & ~correct
    result["wrong_choice"][t] = {u: int((chosen_type[wrong] == u).sum()) for u in QUESTION_TYPES}
  return result
