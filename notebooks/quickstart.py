# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # lloglin quick start
# Train a small Transformer on multi-query associative recall (MQAR), then load the exported
# weights back and run it. Runs on CPU in about a minute, from a checkout of the repository (it
# reads `configs/`) with lloglin installed (`make train` or `pip install -e .` does that). On Colab
# (GPU runtime), first `!git clone` your copy of the repository, `%cd` into it and
# `!pip install -e ".[gpu]"`.

# %%
import os
import tempfile

import numpy as np

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root, where configs/ is

from configs import mqar
from lloglin.training.loading import load_model
from lloglin.training.trainer import train

# %% [markdown]
# The config is data: start from `configs/mqar.py` and change what you like.

# %%
cfg = mqar.get_config("tiny")
cfg.train.num_steps = int(os.environ.get("QUICKSTART_STEPS", 60))
cfg.train.eval_every = cfg.train.num_steps
workdir = tempfile.mkdtemp(prefix="lloglin_quickstart_")
final = train(cfg, workdir)
print({k: round(v, 4) for k, v in final.items() if isinstance(v, float)})

# %% [markdown]
# `export/` holds the params and the config: enough to rebuild the model anywhere.

# %%
model, config = load_model(os.path.join(workdir, "export"))
tokens = np.arange(1, 9, dtype=np.int32)[None]
logits = model(tokens)
print("logits", logits.shape, "for a", config["model"]["layer_pattern"], "model")
