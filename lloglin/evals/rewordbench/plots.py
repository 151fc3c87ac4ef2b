"""The suite's figures: before / after accuracy per category for one transform, and the overall
accuracy drop of every transform."""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from lloglin.evals.report import save_figure
from lloglin.evals.rewordbench.transforms import FAMILIES

_FAMILY_COLORS = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:green")))


def plot_transform(name: str, metrics: dict, path: str) -> str:
  """Grouped bars of accuracy before and after transform `name`, per category and overall
  (metrics: lloglin.evals.rewordbench.metrics.summarize's output)."""
  groups = [g for g in metrics if g != "overall"] + ["overall"]
  x = np.arange(len(groups))
  fig = Figure(figsize=(1.4 * len(groups) + 2, 3.6))
  ax = fig.subplots()
  for offset, key, label in ((-0.2, "accuracy_before", "original"),
                             (0.2, "accuracy_after", "transformed")):
    ax.bar(x + offset, [100 * metrics[g][key] for g in groups], 0.4, label=label)
  ax.set_xticks(x, [f"{g}\n(n={metrics[g]['n']})" for g in groups])
  ax.set_ylim(0, 100)
  ax.set_ylabel("ranking accuracy (%)")
  ax.set_title(f"{name}: drop {100 * metrics['overall']['drop']:.1f} points overall")
  ax.legend(loc="lower right")
  ax.grid(axis="y", alpha=0.3)
  return save_figure(fig, path)


def plot_drops(drops: dict[str, float], families: dict[str, str], path: str) -> str:
  """Horizontal bars: the overall accuracy drop (points) of each transform, coloured by family."""
  names = list(drops)
  fig = Figure(figsize=(6.5, 0.28 * len(names) + 1.2))
  ax = fig.subplots()
  y = np.arange(len(names))[::-1]
  ax.barh(y, [100 * drops[n] for n in names], color=[_FAMILY_COLORS[families[n]] for n in names])
  ax.set_yticks(y, names)
  ax.axvline(0, color="black", linewidth=0.8)
  ax.set_xlabel("accuracy drop (points; original - transformed)")
  ax.set_title("reWordBench: drop per transform")
  ax.legend(handles=[Patch(color=c, label=f) for f, c in _FAMILY_COLORS.items()], loc="best",
            fontsize="small")
  ax.grid(axis="x", alpha=0.3)
  return save_figure(fig, path)
