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
# # reWordBench: reward models under meaning-preserving rewrites
# A reward model should score a response by what it says, not by how it is written. reWordBench
# (arXiv 2503.11751) rewrites preference pairs without changing which response should win and
# measures how much ranking accuracy drops; the paper's fix is a regulariser that asks the reward
# of a response and of its paraphrase to agree. Here, on lloglin's reward world (a generated toy
# whose quality rule is known): a few transforms on one pair, a standard and a regularised reward
# model (`configs/rewordbench.py`), their accuracy before and after each transform, and the drop
# plot. `python -m experiments.rewordbench` runs the full experiment (four variants, two seeds).

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
import tempfile

import jax
from IPython.display import Image, display

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root, where configs/ and experiments/ are
# LLOGLIN_NOTEBOOK_TINY=1: tiny sizes, for the test suite's CPU run.
TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"

from configs.rewordbench import get_config
from experiments import rewordbench as experiment
from lloglin.data.reward_world import world_pairs
from lloglin.evals.rewordbench.transforms import get_transform

print("jax", jax.__version__, "on", jax.devices()[0].device_kind)

# %% [markdown]
# ## The world and a few transforms
# A prompt asks for words of a topic (or a sum); a response's quality is a known function of its
# content (+1 per on-topic item, -1 per off-topic one, ...). In training, sloppy surface (spaced
# punctuation, quotes, a missing end mark) appears only on errors: a shortcut a reward model can
# learn. `add_quotes` and `punct_spaces` make exactly that surface; the others rewrite text in
# ways training never showed (the experiment's "unseen" transforms). Every transform gives the
# prompt and both responses the same random stream.

# %%
pair = next(p for p in world_pairs(get_config("standard").data, split="test", seed=0, num=8)
            if p["category"] == "Chat Hard")
print(f"prompt {pair['prompt']!r}\nchosen {pair['chosen']!r}\nrejected {pair['rejected']!r}\n")
for name in ("punct_spaces", "char_substitution", "word_deletion", "homoglyph", "twitter_handle",
             "rot13"):
  print(f"{name:18s} {get_transform(name).apply(pair, seed=0)['chosen']!r}")

# %% [markdown]
# ## Two reward models
# Both start from the same trunk, pretrained as a byte-level LM on the world's texts (the paper's
# reward models start from a pretrained LM), then regress the score: `standard` with
# `(r(x, y) - s)^2`, `reg10` adding `10 (r(x, y) - r(x, y~))^2` for the world's paraphrase `y~`.
# The experiment's functions do the work: a run with an export is reused, so running the cell
# again costs nothing.

# %%
TRANSFORMS = (("add_quotes", "punct_spaces", "char_substitution", "word_deletion")
              if TINY else experiment.SEEN + experiment.UNSEEN)
workdir = tempfile.mkdtemp(prefix="lloglin_rewordbench_")
export = experiment.pretrain(workdir, tiny=TINY)
results = {v: experiment.run_variant(v, 0, pretrain_export=export, workdir=workdir, tiny=TINY,
                                     transforms=TRANSFORMS, world_pairs=64 if TINY else None)
           for v in ("standard", "reg10")}

# %% [markdown]
# ## Accuracy before and after
# Ranking accuracy on the world's held-out pairs (the test split, which carries no artefact:
# every error is about content), then after each transform. At tiny sizes (the test run) the
# models have barely learnt anything; the full run is `python -m experiments.rewordbench`.

# %%
print(f"{'transform':18s}" + "".join(f"{v:>22s}" for v in results))
print(f"{'clean':18s}" + "".join(f"{r['original']['overall']['accuracy_before']:>22.3f}"
                                 for r in results.values()))
for name in TRANSFORMS:
  cells = [r["transforms"][name]["metrics"]["overall"] for r in results.values()]
  print(f"{name:18s}" + "".join(f"{m['accuracy_after']:>14.3f} (drop {m['drop']:+.2f})"
                                for m in cells))

# %% [markdown]
# ## The drop plot
# The experiment's figure for one seed: the accuracy drop per transform and model.

# %%
summary = experiment.aggregate({v: {0: experiment.summarize_run(r)} for v, r in results.items()})
display(Image(experiment.plot_drops(summary, os.path.join(workdir, "drop.png"))))
