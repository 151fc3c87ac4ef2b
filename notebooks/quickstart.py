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
# # lloglin quick start
# Train a small Transformer on multi-query associative recall (MQAR) from a config, watch the
# loss, load the checkpoint back, evaluate it and generate with it: `configs/mqar.py`, 1200
# steps, the run `make train` makes.

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

from configs import lm as lm_suite_config
from configs import mqar
from lloglin.data import make_dataset
from lloglin.evals import run_suite
from lloglin.inference.generate import generate
from lloglin.training.loading import load_model
from lloglin.training.metrics import read_metrics
from lloglin.training.trainer import train

print("jax", jax.__version__, "on", jax.devices()[0].device_kind)

# %% [markdown]
# ## A config, then `train`
# A config is data: start from `configs/mqar.py` and change what you like. `model.mixer_impl`
# and `model.attention_impl` are `auto`: the Pallas kernels and cuDNN attention on a Hopper GPU,
# the XLA forms elsewhere. `train` writes metrics, checkpoints and a params-only export into the
# workdir; running it again on the same workdir resumes from the last checkpoint.

# %%
cfg = mqar.get_config("tiny" if TINY else None)
if TINY:
  cfg.train.num_steps = cfg.train.eval_every = cfg.train.checkpoint_every = 20
cfg.train.progress_bar = False
workdir = tempfile.mkdtemp(prefix="lloglin_quickstart_")
final = train(cfg, workdir)
print({k: round(v, 4) for k, v in final.items() if isinstance(v, float)})

# %% [markdown]
# ## The loss
# `metrics.jsonl` holds every logged step (TensorBoard event files are written beside it). On
# MQAR a Transformer first recalls *some* value of the context (accuracy near
# 1 / `num_kv_pairs`), then forms induction heads and recalls the right one.

# %%
records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
train_rows = [r for r in records if "loss" in r]
eval_rows = [r for r in records if "eval_loss" in r]
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
ax_loss.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
ax_loss.plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-",
             label="validation")
ax_loss.set(xlabel="step", ylabel="loss (nats)", title="MQAR loss")
ax_loss.legend()
ax_acc.plot([r["step"] for r in eval_rows], [r["eval_accuracy"] for r in eval_rows], "o-")
ax_acc.axhline(1 / cfg.data.mqar.num_kv_pairs, color="gray", ls=":", label="1 / pairs")
ax_acc.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="recall accuracy")
ax_acc.legend()
plt.show()

# %% [markdown]
# ## Load it back
# `load_model` rebuilds the model from a directory alone: a training workdir (its latest
# checkpoint), its `checkpoints/` folder or the `export/` (params and config: enough to rebuild
# the model anywhere).

# %%
print("checkpoints:", sorted(os.listdir(os.path.join(workdir, "checkpoints"))))
model, config = load_model(workdir)
print(config["model"]["layer_pattern"], "model,", config["model"]["num_layers"], "layers")

# %% [markdown]
# ## Evaluate
# The `lm` evaluation suite (what `python eval.py --checkpoint WORKDIR` runs) reports loss,
# perplexity and accuracy on validation batches, and plots the loss at each position: on MQAR
# only the query positions carry a target.

# %%
eval_dir = os.path.join(workdir, "eval")
report = run_suite("lm", lm_suite_config.get_config("tiny" if TINY else None),
                   checkpoint=workdir, out_dir=eval_dir)
print({k: v for k, v in report["results"].items() if k.startswith("eval_") and np.ndim(v) == 0})
display(Image(os.path.join(eval_dir, report["results"]["per_position_plot"])))

# %% [markdown]
# ## Generate
# `generate` prefills the prompt into the decode caches, then draws one token per step. Cut a
# validation row just after its first query key: greedy decoding must continue with that key's
# value.

# %%
val = make_dataset(cfg.data, split="validation", seq_len=cfg.seq_len, batch_size=16, seed=cfg.seed)
batch = next(val)
query_B = np.argmax(batch["loss_mask"], axis=1)  # the first query position of each row
prompts = [row[:q + 1].tolist() for row, q in zip(batch["inputs"], query_B)]
answers = generate(model, prompts, max_new_tokens=1)
expected_B = batch["targets"][np.arange(len(query_B)), query_B]
n = cfg.data.mqar.num_kv_pairs
print("context (key value pairs):", prompts[0][:2 * n], " query key:", prompts[0][-1])
print("generated:", answers[0][0], " expected:", expected_B[0])
print(f"recalled {np.mean([a[0] == e for a, e in zip(answers, expected_B)]):.0%} of "
      f"{len(prompts)} first queries")
