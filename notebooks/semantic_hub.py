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
# # The semantic hub
# Wu, Yu, Yogatama, Lu and Kim, *The Semantic Hub Hypothesis* (arXiv 2411.04986): a language
# model that has read mostly one language represents inputs of other languages (and of other
# forms, such as arithmetic in digits) in its middle layers close to their dominant-language
# meaning, and reading those layers through the model's own head (the logit lens) gives
# dominant-language words. The paper tests Transformers; lloglin asks the same of any of its
# mixers. This notebook builds the toy world of the `semantic_hub` suite, trains a small
# Transformer and a Gated DeltaNet on it, and measures Eq. 1 (similarity of translations against
# mismatched pairs) layer by layer, the logit lens by layer, and steering with a
# dominant-language vector. Method and readings of the paper: `docs/suites/semantic_hub.md`.

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
import matplotlib.pyplot as plt
import ml_collections
from IPython.display import Image, display

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root, where configs/ is
# LLOGLIN_NOTEBOOK_TINY=1: tiny sizes, for the test suite's CPU run.
TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"

from configs.semantic_hub import get_config
from lloglin.data import make_tokenizer
from lloglin.data import multilingual as world
from lloglin.evals.semantic_hub import plots
from lloglin.evals.semantic_hub.suite import analyse_world, steering, summary
from lloglin.training.loading import load_model
from lloglin.training.metrics import read_metrics
from lloglin.training.trainer import train

print("jax", jax.__version__, "on", jax.devices()[0].device_kind)

# %% [markdown]
# ## A world in two languages
# `lloglin.data.multilingual` draws latent sentences (subject, verb, object, an adjective on each,
# one mood per story) and writes them in a *dominant* English-like language (about 90% of the
# stories) and a *minor* one with its own made-up words, subject-object-verb order and
# postpositions; a few stories are parallel (each sentence followed by its translation) or
# code-switched, and some documents are sums written in digits or in dominant number words. A
# minor sentence is its dominant translation word for word, reordered: `parse` reads the latent
# sentence back from either rendering. The tokenizer is one token per word, so the logit lens
# reads words.

# %%
cfg = get_config("tiny" if TINY else "transformer")
for dominant, minor in world.parallel_pairs("language", 3, seed=0):
  assert world.parse(dominant, "dominant") == world.parse(minor, "minor")
  print(f"{dominant:45s} | {minor}")
for digits, words in world.parallel_pairs("arithmetic", 2, seed=0):
  print(f"{digits:45s} | {words}")
print("\na training document:\n ", world.document(cfg.data.multilingual, split="train",
                                                  seed=cfg.seed, index=0))
tokenizer = make_tokenizer(cfg.data)
print(f"\n{tokenizer.vocab_size} tokens; word types:",
      {k: len(v) for k, v in world.WORD_TYPES.items()})

# %% [markdown]
# ## Train a Transformer and a Gated DeltaNet
# `configs/semantic_hub.py` holds the models: 6 blocks of width 64, about 0.33M parameters, 800
# steps (a few minutes each on a GPU, more on a CPU). The same configs train from a shell:
# `python train.py --config configs/semantic_hub.py:gdn --workdir runs/hub_gdn`. The test suite's
# tiny run trains its `tiny` variant alone, a 2-block Transformer, for 10 steps: enough to run
# every measure, not to learn the world.

# %%
VARIANTS = {"transformer": "tiny"} if TINY else {"transformer": "transformer", "gdn": "gdn"}
runs = {}
for label, variant in VARIANTS.items():
  run_cfg = get_config(variant)
  run_cfg.train.progress_bar = False
  runs[label] = tempfile.mkdtemp(prefix=f"lloglin_hub_{label}_")
  final = train(run_cfg, runs[label])
  print(label, {k: round(v, 3) for k, v in final.items() if k in ("loss", "eval_loss")})

fig, ax = plt.subplots(figsize=(6.5, 3.5))
for label, workdir in runs.items():
  rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
  ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
ax.set(xlabel="step", ylabel="train loss (nats)", title="the multilingual world")
ax.legend()
plt.show()

# %% [markdown]
# ## Eq. 1: translations against mismatched pairs, layer by layer
# For N translation pairs (dominant, minor), the cosine of each pair's hidden states (mean over
# its tokens) minus the mean cosine of the mismatched pairs (a_i, b_j), i != j, at each layer
# (0: the embeddings, 1: after the last block). The two languages share no token, so at the
# embeddings they are as alike as any two sentences; a hub shows as a rise in the middle layers.
# The same for sums in digits and in words (dashed).

# %%
s = cfg.semantic_hub
measures = s.copy_and_resolve_references()
measures.steer_sources = ()  # steering gets its own section below
models, results = {}, {}
for label, workdir in runs.items():
  model, train_config = load_model(os.path.join(workdir, "export"))  # params and config
  models[label] = model, make_tokenizer(ml_collections.ConfigDict(train_config["data"]))
  results[label] = analyse_world(*models[label], measures, label=label)
out_dir = tempfile.mkdtemp(prefix="lloglin_hub_figures_")
display(Image(plots.similarity(results, os.path.join(out_dir, "similarity.png"))))

# %% [markdown]
# ## The logit lens: which language wins, layer by layer
# Eq. 2: each layer's residual stream read by the final norm and the head, on minor-language
# input. Left: the probability mass on dominant words, minor words and digits; middle: the
# probability of the true next (minor) token against that of its dominant translation; right:
# after `c = a +` in digits, b as a digit against b as a number word. The hypothesis predicts the
# dominant translation (and the number word) ahead of the last layer, where the minor token (the
# digit) must win.

# %%
display(Image(plots.lens(results, os.path.join(out_dir, "logit_lens.png"), s.lens_final_norm)))

# %% [markdown]
# ## Steering with a dominant-language vector
# A mood direction from dominant-language text only: the mean difference of the stream at the
# middle layer between matched positive and negative sentences just before the object's
# adjective ("activations"), or the head's rows of the positive minus the negative adjectives
# ("unembedding"), and a random direction, each scaled to the stream's mean norm there. Added with
# a strength while `lloglin.inference.generate` continues minor-language prompts (prefill and
# every decode step), it should move the share of positive adjectives in what the model writes,
# in the minor language, more than the random vector does. Left: by strength at the middle layer;
# middle: at the largest strength, by layer (not at tiny sizes); right: whether the continuations
# stay in the minor language.

# %%
for label, (model, tokenizer) in models.items():
  results[label]["steering"] = steering(model, tokenizer, s, label=label)
  print(summary(label, results[label], s.lens_final_norm))
display(Image(plots.steering(results, os.path.join(out_dir, "steering.png"))))

# %% [markdown]
# ## The experiment
# (At the test suite's tiny sizes the curves above are noise: the model has not learnt the world.)
# The experiment trains the Transformer, Gated DeltaNet, log-linear Gated DeltaNet and a 2-block
# Transformer as a control, and draws them in one figure each:
# `python -m experiments.semantic_hub --workdir runs` (`experiments/semantic_hub.py`). Its
# figures, what they show and what they do not (on this toy, claim (i) of the paper, translations
# closest in the middle layers, did not reproduce) are in `docs/suites/semantic_hub.md`. The
# suite also reads any lloglin export with your tokenizer and your paired text files:
# `python eval.py --suite semantic_hub --config configs/semantic_hub.py:transformer
# --checkpoint RUN --config.semantic_hub.pairs_a=a.txt --config.semantic_hub.pairs_b=b.txt`.
