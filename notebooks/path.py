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
# # PaTH attention
# *PaTH Attention: Position Encoding via Accumulating Householder Transformations* (arXiv
# 2505.16381): softmax attention whose position encoding is a product of data-dependent
# Householder-like transformations, one per token, instead of RoPE's fixed rotations. This
# notebook shows what that does to the attention logits, checks the picture against lloglin's
# op, and trains PaTH and RoPE attention on flip-flop language modelling, the paper's
# state-tracking toy. The algorithm, in full: `docs/algorithms/path.md`.

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
import argparse
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root: configs/ and experiments/ import from there
# LLOGLIN_NOTEBOOK_TINY=1: tiny sizes, for the test suite's CPU run.
TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"

from experiments import run_mixer_experiments
from lloglin.data.flipflop import FlipFlopExamples
from lloglin.layers.registry import mixer_dispatch
from lloglin.ops.attention import apply_rope
from lloglin.ops.path import path_quadratic

# Training runs with model.mixer_impl='auto': the Pallas kernels on a Hopper GPU (where they are
# tested and timed), the XLA blockwise form elsewhere.
print("jax", jax.__version__, "on", jax.devices()[0].device_kind, "- PaTH runs",
      "its Pallas kernel" if mixer_dispatch("auto", "path", has_kernel=True).kernel
      else "its XLA form")

# %% [markdown]
# ## Householder products as a position encoding
# Token r contributes `H_r = I - beta_r w_r w_r^T` (unit `w_r`, `beta_r` in (0, 2): the identity
# across `w_r`, a factor `1 - beta_r` along it; beta near 2 is nearly a reflection). Query t
# meets key s through every transformation in between:
#
#     z[t, s] = q_t^T (H_t H_{t-1} ... H_{s+1}) k_s
#
# Put the same q and k at every position, so that only the position encoding can tell positions
# apart. Without one every logit is equal; RoPE's rotations make the logit a function of t - s
# alone (constant along diagonals); PaTH's depend on the tokens in between. The keys are carried
# forward one transformation per token, which is also how PaTH decodes (`path_step`: a rank-1
# update of every cached key).

# %%
T, K = 48, 16
rng = np.random.default_rng(0)
q_K, k_K = rng.normal(size=K), rng.normal(size=K)
w_TK = rng.normal(size=(T, K))
w_TK /= np.linalg.norm(w_TK, axis=1, keepdims=True)
beta_T = rng.uniform(0, 2, T)

z_path_TS = np.full((T, T), np.nan)
keys_SK = np.zeros((T, K))
for t in range(T):
  keys_SK[:t] -= beta_T[t] * np.outer(keys_SK[:t] @ w_TK[t], w_TK[t])  # H_t on every older key
  keys_SK[t] = k_K
  z_path_TS[t, :t + 1] = keys_SK[:t + 1] @ q_K

positions = jnp.arange(T)[None]
rope = lambda x_K: np.asarray(apply_rope(jnp.broadcast_to(jnp.asarray(x_K), (1, T, 1, K)),
                                         positions))[0, :, 0]
z_rope_TS = np.tril(rope(q_K) @ rope(k_K).T) + np.triu(np.full((T, T), np.nan), 1)
z_nope_TS = np.tril(np.full((T, T), q_K @ k_K)) + np.triu(np.full((T, T), np.nan), 1)

fig, axes = plt.subplots(1, 3, figsize=(12, 4), layout="constrained")
titles = ("no position encoding", "RoPE: a function of t - s", "PaTH: data-dependent")
for ax, z, title in zip(axes, (z_nope_TS, z_rope_TS, z_path_TS), titles):
  image = ax.imshow(z, cmap="coolwarm")
  ax.set(title=title, xlabel="key position s", ylabel="query position t")
  fig.colorbar(image, ax=ax, shrink=0.8)
plt.show()

# %% [markdown]
# The same logits through lloglin's op: `path_quadratic` (one of PaTH's two float64 oracles)
# with these q, k, w and beta must return the softmax of `z / sqrt(K)` applied to the values.

# %%
v_TV = rng.normal(size=(T, 4))
with jax.enable_x64(True):
  every_position = lambda x_K: jnp.asarray(np.broadcast_to(x_K, (1, T, 1, K)))  # B = H = 1
  out_BTHV = path_quadratic(every_position(q_K), every_position(k_K),
                            jnp.asarray(v_TV[None, :, None]), jnp.asarray(w_TK[None, :, None]),
                            jnp.asarray(beta_T[None, :, None]))
  logits_TS = np.where(np.isnan(z_path_TS), -np.inf, z_path_TS / np.sqrt(K))
  probs_TS = np.exp(logits_TS - logits_TS.max(1, keepdims=True))
  expected_TV = (probs_TS / probs_TS.sum(1, keepdims=True)) @ v_TV
  gap = np.abs(out_BTHV[0, :, 0] - expected_TV).max()
  print(f"max |path_quadratic - softmax(z / sqrt K) v| = {gap:.2e}")

# %% [markdown]
# ## Flip-flop language modelling
# A flip-flop string is instruction-bit pairs: `w b` writes bit b to a one-bit memory, `i b` is
# ignored, `r b` reads it, so a read's bit must equal the latest write's (Liu et al. 2023). The
# models train on FFL(0.8) (80% of instructions ignored) and are tested in distribution, on
# sparse strings FFL(0.98) (long gaps between a write and its read) and on dense ones FFL(0.1).
# The loss counts the read bits only.

# %%
NAMES = {0: "w", 1: "r", 2: "i", 3: "0", 4: "1", 5: "<s>"}
strings = FlipFlopExamples(argparse.Namespace(p_ignore=0.8, val_p_ignore=0.8,
                                              num_train_examples=1, num_val_examples=1),
                           split="train", seq_len=40, seed=0)
print(" ".join(NAMES[int(t)] for t in strings.string(0)))

# %% [markdown]
# One layer, two heads, 64 wide (`configs/flipflop.py`): PaTH against attention with RoPE, 400
# steps each on 128-token strings, then the read error on each test distribution (from a shell:
# `python -m experiments.run_mixer_experiments flipflop --mixers path,attention`).

# %%
runs = argparse.Namespace(
    mixers=["path", "attention"], seeds=[0], tag="", steps=10 if TINY else 0,
    workdir=tempfile.mkdtemp(prefix="lloglin_flipflop_"),
    set=(["seq_len=16", "model.max_seq_len=16", "model.chunk_size=16", "batch_size=8",
          "train.eval_steps=1", "data.flipflop.num_val_examples=16"] if TINY else []))
records = run_mixer_experiments.flipflop(runs)
table, fig = run_mixer_experiments.flipflop_report(records)
print("\n".join(table))
display(fig)
