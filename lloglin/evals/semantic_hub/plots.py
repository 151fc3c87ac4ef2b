"""The semantic_hub suite's figures: one colour per model, layers as a fraction of each model's
depth (0: the embeddings, 1: after the last block) so models of different depths share an axis."""

import numpy as np
from matplotlib.figure import Figure

from lloglin.evals.report import save_figure

_SOURCE_STYLES = {"activations": "-", "unembedding": "-.", "random": ":"}


def _depth(r: dict, n: int | None = None) -> np.ndarray:
  return np.arange(r["num_layers"] + 1 if n is None else n) / r["num_layers"]


def _colours(results: dict) -> dict:
  cycle = [f"C{i}" for i in range(10)]
  return {label: cycle[i % 10] for i, label in enumerate(results)}


def _finish(fig, axes, path: str) -> str:
  for ax in axes:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.tight_layout()
  return save_figure(fig, path)


def similarity(results: dict, path: str) -> str:
  """Eq. 1 by layer (left) and the paired cosine against the shuffled-pair baseline (right)."""
  fig = Figure(figsize=(11, 4))
  left, right = fig.subplots(1, 2)
  colour = _colours(results)
  for label, r in results.items():
    for (kind, sim), style in zip(r["similarity"].items(), ("-", "--")):
      x = _depth(r)
      left.plot(x, sim["adjusted"], style, marker=".", color=colour[label], label=f"{label} {kind}")
      if style == "-":
        right.plot(x, sim["paired"], "-", marker=".", color=colour[label], label=f"{label} paired")
        right.plot(x, sim["shuffled"], ":", color=colour[label], label=f"{label} shuffled")
  left.set_title("Eq. 1: paired minus shuffled cosine")
  right.set_title(f"{next(iter(next(iter(results.values()))['similarity']))} pairs: cosine")
  for ax in (left, right):
    ax.set_xlabel("layer / num_layers")
  left.axhline(0, color="k", linewidth=0.5)
  return _finish(fig, (left, right), path)


def lens(results: dict, path: str, final_norm: bool) -> str:
  """The logit lens by layer: which language's tokens it favours on minor-language (file b)
  input; on the world also the dominant translation against the next minor token, and the number
  word against the digit after "c = a +"."""
  key = "final_norm" if final_norm else "raw"
  world = any("arithmetic" in r["lens"] for r in results.values())
  fig = Figure(figsize=(16 if world else 6, 4))
  axes = list(np.atleast_1d(fig.subplots(1, 3 if world else 1)))
  colour = _colours(results)
  for label, r in results.items():
    x = _depth(r)
    read = next(iter(r["lens"].values()))[key]
    for (kind, share), style in zip(read["share"].items(), ("-", "--", ":")):
      axes[0].plot(x, share, style, marker=".", color=colour[label], label=f"{label} {kind}")
    if world:
      for ax, part, names in ((axes[1], "minor_input", ("next minor token", "its dominant "
                                                         "translation")),
                              (axes[2], "arithmetic", ("digit b", "number word b"))):
        p = r["lens"][part][key]["target_probability"]
        ax.plot(x, p[:, 1], "-", marker=".", color=colour[label], label=f"{label} {names[1]}")
        ax.plot(x, p[:, 0], "--", color=colour[label], label=f"{label} {names[0]}")
  axes[0].set_title(f"logit lens ({key}): mass by token type, "
                    f"{'minor-language' if world else 'pairs_b'} input")
  if world:
    axes[1].set_title("minor input: p(next token) vs p(its translation)")
    axes[2].set_title('after "c = a +" in digits: p(b) as digit vs word')
  for ax in axes:
    ax.set_xlabel("layer / num_layers")
  return _finish(fig, axes, path)


def steering(results: dict, path: str) -> str:
  """Shift of the positive-adjective share of minor-language continuations against the unsteered
  ones: by strength at the chosen layer (left), by layer at the largest strength (middle); the
  share of minor-language words kept (right)."""
  fig = Figure(figsize=(16, 4))
  axes = fig.subplots(1, 3)
  colour = _colours(results)
  for label, r in results.items():
    if "steering" not in r:
      continue
    st = r["steering"]
    base = st["unsteered"]["positive_share"]
    layer, top = st["layers"][0], max(row["strength"] for row in st["table"])
    for source, style in _SOURCE_STYLES.items():
      rows = [row for row in st["table"] if row["source"] == source]
      if not rows:
        continue
      at = sorted((row["strength"], row) for row in rows if row["layer"] == layer)
      xs = [x for x, _ in at]
      axes[0].plot(xs, [row["positive_share"] - base for _, row in at], style, marker=".",
                   color=colour[label], label=f"{label} {source}")
      axes[2].plot(xs, [row["minor_share"] for _, row in at], style, marker=".",
                   color=colour[label], label=f"{label} {source}")
      sweep = sorted((row["layer"], row) for row in rows if row["strength"] == top)
      if len(sweep) > 1:
        axes[1].plot([lay / r["num_layers"] for lay, _ in sweep],
                     [row["positive_share"] - base for _, row in sweep], style, marker=".",
                     color=colour[label], label=f"{label} {source}")
  axes[0].set(title="positive-share shift vs strength (middle layer)",
              xlabel="strength (x mean stream norm)")
  axes[1].set(title="positive-share shift vs layer (largest strength)",
              xlabel="layer / num_layers")
  axes[2].set(title="share of minor-language words", xlabel="strength (x mean stream norm)")
  for ax in axes[:2]:
    ax.axhline(0, color="k", linewidth=0.5)
  return _finish(fig, axes, path)
