# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Visual perception by principles
# Chaudhari, Akula, Kim and Blake, *Multimodal LLM Augmented Reasoning for Interpretable Visual
# Perception Analysis* (arXiv 2504.12511): a judge compares two images at a time on one principle
# of visual complexity (the six Gestalt laws, clutter, symmetry) and justifies its answer; the
# pairwise outcomes become one score per image and principle, compared with human complexity
# ratings. This notebook runs the `perception` suite's toy: synthetic images with known clutter
# and symmetry, a noisy oracle judge whose Bradley-Terry scores should recover the true order,
# and the computed-measure judges. Method and readings of the paper: `docs/suites/perception.md`.

# %%
# In Colab: clone the repository and install lloglin (with the GPU extras on a GPU runtime).
# Elsewhere this cell does nothing: run the notebook from a checkout with lloglin installed.
import os
import shutil
import subprocess
import sys

REPOSITORY = "https://github.com/<org>/lloglin"  # your copy of the repository
if "google.colab" in sys.modules and not os.path.isdir("configs"):
  if not os.path.isdir("lloglin"):
    subprocess.run(["git", "clone", "--depth=1", REPOSITORY], check=True)
  os.chdir("lloglin")
  extras = ".[gpu]" if shutil.which("nvidia-smi") else "."
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", extras], check=True)

# %%
import matplotlib.pyplot as plt
import scipy.stats

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root, where lloglin/ is (installed or not)

from lloglin.evals.perception import aggregate, judges, synthetic
from lloglin.evals.perception.principles import pairwise_prompt

TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"
NUM_IMAGES = 16 if TINY else 60
items = synthetic.make_images(NUM_IMAGES, seed=0)
fig, axes = plt.subplots(1, 6, figsize=(12, 2.4))
for ax, it in zip(axes, items):
  ax.imshow(it.image)
  ax.set_title(f"clutter {it.levels['clutter']:g}\nsymmetry {it.levels['symmetry']:.2f}",
               fontsize=8)
  ax.axis("off")
plt.show()

# %% [markdown]
# The prompt a multimodal judge gets for one principle (the `api` judge sends it with both
# images):

# %%
print(pairwise_prompt("clutter"))

# %% [markdown]
# A noisy oracle knows the true level and flips its answer with probability p. Bradley-Terry
# (ties as half wins) turns all pairs' outcomes into scores; SROCC with the true level:

# %%
pairs = judges.sample_pairs(len(items))
flips = (0.0, 0.1, 0.2, 0.3, 0.4)
srocc = {level: [] for level in ("clutter", "symmetry")}
for flip in flips:
  for level in srocc:
    records, _ = judges.judge_pairs(judges.NoisyOracleJudge(flip, seed=0), items, pairs, level)
    bt = aggregate.scores_from_records(len(items), records, prior=0.1)["bradley_terry"]
    srocc[level].append(scipy.stats.spearmanr(bt, [it.levels[level] for it in items])[0])
for level, values in srocc.items():
  plt.plot(flips, values, "o-", label=level)
plt.axhline(0.9, color="k", lw=0.5, ls=":")
plt.xlabel("flip probability p")
plt.ylabel("SROCC with the true level")
plt.legend()
plt.show()

# %% [markdown]
# The computed-measure judges: edge density for clutter, mirror correlation for symmetry,
# compressed size for simplicity. Each row: SROCC of the judge's Bradley-Terry scores with the
# true clutter and symmetry levels.

# %%
judge = judges.MeasureJudge()
for name in judges.MEASURES:
  records, _ = judges.judge_pairs(judge, items, pairs, name)
  bt = aggregate.scores_from_records(len(items), records, prior=0.1)["bradley_terry"]
  print(f"{name:10s}", "  ".join(
      f"{level} {scipy.stats.spearmanr(bt, [it.levels[level] for it in items])[0]:+.2f}"
      for level in ("clutter", "symmetry")))
