"""Language-model metrics over a data iterator: loss, perplexity, accuracy, per-position loss."""

import math

import jax
import numpy as np

from lloglin.evals.report import progress, save_figure
from lloglin.parallel import distributed


def evaluate(eval_step, params, rest, dataset, num_batches: int, mesh, *,
             progress_desc: str | None = None) -> dict:
  """Averages over the first `num_batches` batches of `dataset` (rewound first, so every
  evaluation sees the same batches). Accuracy counts masked targets only, so on MQAR it is the
  accuracy of the recalled values. `progress_desc` shows a progress bar with that label."""
  dataset.set_state({"epoch": 0, "index": 0})
  batches = range(num_batches)
  if progress_desc is not None:
    batches = progress(batches, desc=progress_desc)
  totals = None
  for _ in batches:
    out = jax.device_get(eval_step(params, rest, distributed.global_batch(next(dataset), mesh)))
    totals = out if totals is None else jax.tree.map(np.add, totals, out)
  count = max(float(totals["count"]), 1.0)
  loss = float(totals["loss_sum"]) / count
  return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0)),
          "eval_accuracy": float(totals["correct_sum"]) / count,
          "eval_tokens": int(totals["count"]),
          "eval_loss_per_position": (totals["loss_T"] / np.maximum(totals["count_T"], 1)).tolist()}


def plot_per_position_loss(loss_T, path: str, title: str = "") -> str:
  """PNG of the loss at each position of the sequence (positions without targets omitted)."""
  from matplotlib.figure import Figure
  loss_T = np.asarray(loss_T, dtype=float)
  pos = np.nonzero(loss_T > 0)[0]
  fig = Figure(figsize=(7, 4))
  ax = fig.subplots()
  ax.plot(pos, loss_T[pos], marker=".", linewidth=1)
  ax.set_xlabel("position in sequence")
  ax.set_ylabel("loss (nats)")
  ax.set_title(title or "per-position loss")
  ax.grid(alpha=0.3)
  return save_figure(fig, path)
