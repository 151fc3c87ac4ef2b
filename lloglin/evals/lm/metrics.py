"""The per-position loss plot of the `lm` suite (the metrics are the lm task's `evaluate`)."""

import numpy as np

from lloglin.evals.report import save_figure


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
