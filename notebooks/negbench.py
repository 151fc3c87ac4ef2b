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
# # NegBench: do dual encoders understand negation?
# Alhamoud, Alshammari, Tian, Li, Torr, Kim and Ghassemi, *Vision-Language Models Do Not
# Understand Negation* (arXiv 2501.09425): CLIP-style models score "a photo with no dog" about
# like "a photo with a dog" (an *affirmation bias*), so they fail retrieval with negated captions
# and multiple-choice questions whose right answer negates something; fine-tuning on captions with
# negations (NegCap) and on multiple-choice questions (NegMCQ) improves both. This notebook
# runs the `negbench` suite's toy: synthetic scenes with their object lists stand in for COCO, a
# tiny dual encoder is pretrained on affirmative captions only, evaluated, fine-tuned on NegCap +
# NegMCQ and evaluated again. Method and readings of the paper: `docs/suites/negbench.md`.

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
import numpy as np
from IPython.display import Image, display

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root, where configs/ is
# LLOGLIN_NOTEBOOK_TINY=1: tiny sizes, for the test suite's CPU run.
TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"

from configs.negbench import get_config, tiny_sizes
from experiments.negbench import summary, types_figure
from lloglin.data.negbench import QUESTION_TYPES, Annotations, mcq_question, retrieval_items
from lloglin.data.scenes import CLASSES, make_scenes
from lloglin.evals import run_suite
from lloglin.training.metrics import read_metrics
from lloglin.training.trainer import train

print("jax", jax.__version__, "on", jax.devices()[0].device_kind)

# %% [markdown]
# ## Scenes and their object lists
# `lloglin.data.scenes` draws small images holding 1 to 3 coloured glyphs of ten classes (each
# class one shape in one colour, so a class name is one word). Classes come from contexts, so some
# co-occur often: an absent class that often accompanies the present ones is a *plausible*
# negative, which is how NegBench picks the object to negate (COCO's co-occurrence statistics).

# %%
scenes = make_scenes(8, seed=0, split="test")
fig, axes = plt.subplots(1, len(scenes), figsize=(1.6 * len(scenes), 2.1))
for ax, image, objects in zip(axes, scenes.images_NHWC, scenes.objects):
  ax.imshow(image)
  ax.set_title("\n".join(objects), fontsize=8)
  ax.axis("off")
plt.show()
print("classes:", ", ".join(CLASSES))

# %% [markdown]
# ## Retrieval-Neg and MCQ-Neg
# Retrieval-Neg: each image's caption gets a sentence negating a plausible absent object, before
# or after it; a model that reads the negation should still retrieve the image. MCQ-Neg: four
# options about an image, one true; the true one is an *affirmation* ("features A and B"), a
# *negation* ("does not feature N") or a *hybrid* ("features B, but not N"), and the three
# distractors are the wrong hybrid, the false affirmation and the false negation. Below, one
# image's question of each type (the true option marked).

# %%
ann = Annotations(scenes.objects, CLASSES)
for item in retrieval_items(ann, seed=1)[:3]:
  print(f"{', '.join(ann.objects[item.image]):25s} | {item.caption}\n{'':25s} | "
        f"{item.negated_caption}")
image = next(n for n, objects in enumerate(ann.objects) if len(objects) >= 2)
negative = ann.negatives(image, 1, np.random.default_rng(0))[0]
print(f"\nimage {image}: {', '.join(ann.objects[image])} (negated object: {negative})")
for qtype in QUESTION_TYPES:
  question = mcq_question(ann.objects[image], negative, qtype, image, np.random.default_rng(1))
  print(f"{qtype} question:")
  for i, (option, otype) in enumerate(zip(question.options, question.option_types)):
    print(f"  {'*' if i == question.answer else ' '} {option:50s} ({otype})")

# %% [markdown]
# ## Pretrain a dual encoder on affirmative captions
# `configs/negbench.py:pretrain`: a ViT of 2 blocks over 8 x 8 patches of 32 x 32 scenes and a
# 2-block text tower, width 64, trained with the CLIP loss for 500 steps on 4000 scenes' captions,
# none with a negation. From a shell:
# `python train.py --config configs/negbench.py:pretrain --workdir runs/nb_pretrain`. The test
# suite's tiny run trains the towers at width 16 for 20 steps: enough to run every step, not to
# learn the scenes.

# %%
def stage_config(variant, init_from=""):
  config = get_config(variant)
  if TINY:
    tiny_sizes(config)
  config.train.progress_bar = False
  config.init_from = init_from
  return config


def plot_loss(workdir, title):
  rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
  fig, ax = plt.subplots(figsize=(6, 3))
  ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
  ax.set(xlabel="step", ylabel="train loss", title=title)
  plt.show()


runs = {"pretrain": tempfile.mkdtemp(prefix="lloglin_nb_pretrain_")}
final = train(stage_config("pretrain"), runs["pretrain"])
print({k: round(v, 3) for k, v in final.items() if k in ("loss", "eval_loss", "eval_accuracy")})
plot_loss(runs["pretrain"], "pretraining: CLIP loss on affirmative captions")

# %% [markdown]
# ## The affirmation bias
# The suite (what `python eval.py --suite negbench --config configs/negbench.py --checkpoint RUN`
# runs) on the scenes' test split: MCQ-Neg accuracy per question type, with the type of option
# each type of question was answered with. A model that ignores "not" picks affirmations: high
# accuracy on affirmation questions, near zero on negation questions (their true option says
# "does not feature N", which reads to it like an image without the two objects it sees).

# %%
reports, figures = {}, {}


def evaluate(variant):
  """The suite on a run: its results in reports[variant], its figures in figures[variant]."""
  figures[variant] = os.path.join(runs[variant], "eval", "negbench")
  reports[variant] = run_suite("negbench", stage_config(variant), checkpoint=runs[variant],
                               out_dir=figures[variant])["results"]


evaluate("pretrain")
display(Image(os.path.join(figures["pretrain"], "mcq.png")))
display(Image(os.path.join(figures["pretrain"], "retrieval.png")))

# %% [markdown]
# ## Fine-tune on NegCap + NegMCQ
# `configs/negbench.py:negmcq_a0.9` starts from the pretrained export and trains 200 steps on
# NegCap records (each scene's caption and two negated ones), each carrying a four-option MCQ-Neg
# set about its scene; the loss is alpha * CLIP + (1 - alpha) * MCQ with alpha = 0.9.

# %%
runs["negmcq_a0.9"] = tempfile.mkdtemp(prefix="lloglin_nb_negmcq_")
final = train(stage_config("negmcq_a0.9", os.path.join(runs["pretrain"], "export")),
              runs["negmcq_a0.9"])
print({k: round(v, 3) for k, v in final.items()
       if k in ("loss", "eval_loss", "eval_accuracy", "eval_mcq_accuracy")})
plot_loss(runs["negmcq_a0.9"], "fine-tuning: 0.9 CLIP + 0.1 MCQ")

# %% [markdown]
# ## What fine-tuning changed
# The same suite on the fine-tuned model, and the two side by side (the experiment's figure).

# %%
evaluate("negmcq_a0.9")
display(Image(os.path.join(figures["negmcq_a0.9"], "mcq.png")))
means = {v: summary(r) for v, r in reports.items()}
types_path = os.path.join(tempfile.mkdtemp(prefix="lloglin_nb_figures_"), "mcq_types.png")
types_figure(means, types_path)
display(Image(types_path))

# %% [markdown]
# ## Affirmations and negations in the text tower
# The paper's Fig. 6 probe: captions of five template categories (affirmations of one and of two
# objects, negations, hybrids, double negations), each in several phrasings, embedded by the text
# tower and drawn on their first two principal components. Before fine-tuning the affirmations and
# the negations of the same object lie together (their mean cosine is printed above by the suite);
# fine-tuning should pull the negations away.

# %%
for variant in runs:
  print(f"{variant}: cos(affirmation, negation) "
        f"{reports[variant]['probe']['affirmation_negation_cosine']:.3f}")
  display(Image(os.path.join(figures[variant], "pca.png")))

# %% [markdown]
# ## The experiment
# (At the test suite's tiny sizes the numbers above are noise: the model has not learnt the
# scenes.) The experiment pretrains the encoder, fine-tunes it on NegCap and on NegCap + NegMCQ
# for alpha in {0, 0.5, 0.9, 0.99}, repeats pretraining and alpha = 0.9 with a Gated DeltaNet
# text tower, two seeds each, and writes the table and figures of
# `experiments/results/negbench/`: `python -m experiments.negbench --seeds 0,1`
# (`experiments/negbench.py`). What they show is in `docs/suites/negbench.md`: on this toy,
# pretraining gives the affirmation bias (negation questions almost never answered right),
# NegCap alone does not remove it and NegCap + NegMCQ does, more so at smaller alpha (alpha = 0,
# the MCQ loss alone, loses retrieval). The suite also evaluates any dual encoder on the released
# NegBench CSVs (COCO / VOC2007 images on disk):
# `python eval.py --suite negbench --config configs/negbench.py --checkpoint RUN
# --config.negbench.mcq_csv=data/COCO_val_mcq_llama3.1_rephrased.csv
# --config.negbench.image_root=data/coco` (retrieval: `retrieval_csv`, `negated_retrieval_csv`).
