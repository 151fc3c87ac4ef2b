"""The negbench suite's figures: MCQ accuracy per question type with the chosen option types,
Recall@k on original against negated captions, and the PCA of caption embeddings by template
category (the paper's Fig. 6 probe)."""

import numpy as np
from matplotlib.figure import Figure

from lloglin.data.negbench import QUESTION_TYPES
from lloglin.evals.report import save_figure


def mcq(m: dict, path: str, *, title: str = "MCQ-Neg") -> str:
  """Left: accuracy per question type and overall (chance dashed); right: the fraction of
  questions of each type (rows) answered with an option of each type (columns)."""
  fig = Figure(figsize=(10, 3.8))
  left, right = fig.subplots(1, 2)
  names = list(QUESTION_TYPES) + ["overall"]
  values = [m["per_type"][t] for t in QUESTION_TYPES] + [m["accuracy"]]
  left.bar(names, values, color=["C0", "C1", "C2", "0.4"])
  for x, v in enumerate(values):
    if np.isfinite(v):
      left.text(x, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
  if m.get("num_options"):
    left.axhline(1 / m["num_options"], color="k", linestyle="--", linewidth=0.8, label="chance")
    left.legend(fontsize=7)
  left.set_ylim(0, 1.05)
  left.set_ylabel("accuracy")
  left.set_title(f"{title}: accuracy per question type")
  chosen = np.array([[m["chosen_type"][t][u] for u in QUESTION_TYPES] for t in QUESTION_TYPES])
  image = right.imshow(chosen, vmin=0, vmax=1, cmap="viridis")
  for i in range(3):
    for j in range(3):
      if np.isfinite(chosen[i, j]):
        right.text(j, i, f"{chosen[i, j]:.2f}", ha="center", va="center", fontsize=8,
                   color="w" if chosen[i, j] < 0.5 else "k")
  right.set_xticks(range(3), QUESTION_TYPES)
  right.set_yticks(range(3), QUESTION_TYPES)
  right.set_xlabel("type of the option chosen")
  right.set_ylabel("question type (correct option)")
  right.set_title("chosen option types")
  fig.colorbar(image, ax=right, fraction=0.046)
  fig.tight_layout()
  return save_figure(fig, path)


def retrieval(r: dict, path: str) -> str:
  """Recall@k with the original captions against the negated ones."""
  fig = Figure(figsize=(5.5, 3.8))
  ax = fig.subplots()
  names = [n for n in ("original", "negated") if n in r]  # a CSV run may have only one
  ks = list(r[names[0]])
  x = np.arange(len(ks))
  for shift, name in zip((-0.2, 0.2), names):
    ax.bar(x + shift, [r[name][k] for k in ks], width=0.4,
           color={"original": "C0", "negated": "C3"}[name], label=f"{name} captions")
  ax.set_xticks(x, ks)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("recall")
  ax.set_title(f"Retrieval-Neg (text to image, {r['num_images']} images)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return save_figure(fig, path)


def pca(embeddings: dict[str, np.ndarray], path: str) -> str:
  """The caption embeddings (L2-normalised) of each template category on their first two
  principal components."""
  names = list(embeddings)
  x = np.concatenate([embeddings[n] for n in names])
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  x = x - x.mean(0)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  explained = s**2 / (s**2).sum()
  xy = x @ vt[:2].T
  fig = Figure(figsize=(5.5, 4.5))
  ax = fig.subplots()
  start = 0
  for i, n in enumerate(names):
    stop = start + len(embeddings[n])
    ax.scatter(xy[start:stop, 0], xy[start:stop, 1], s=12, color=f"C{i}", label=n, alpha=0.8)
    start = stop
  ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of the variance)")
  ax.set_ylabel(f"PC 2 ({explained[1]:.0%})")
  ax.set_title("caption embeddings by template category")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return save_figure(fig, path)
