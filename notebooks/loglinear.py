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
# # Log-linear attention
# Guo, Yang, Goel, Xing, Dao and Kim, *Log-Linear Attention* (arXiv 2506.04761): a linear RNN
# keeps one state; log-linear attention keeps one state per level of a Fenwick tree over the
# prefix, so recent tokens are summarised finely and old ones coarsely, in O(log T) memory. This
# notebook draws the hierarchy, measures the decode state against T, trains a linear mixer and
# its log-linear variant on associative recall, and times the kernel on the device it runs on.
# The algorithm, in full: `docs/algorithms/loglinear.md`.

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
from flax import nnx
from IPython.display import display

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root: configs/, benchmarks/ and experiments/ import from there
# LLOGLIN_NOTEBOOK_TINY=1: tiny sizes, for the test suite's CPU run.
TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"

from benchmarks import bench_mixers
from configs.architectures import architecture_config
from experiments import run_mixer_experiments
from lloglin.layers.registry import make_mixer, mixer_dispatch
from lloglin.models import ModelConfig
from lloglin.ops.hierarchy import level_matrix, num_levels

ON_GPU = jax.default_backend() == "gpu"
# Training runs with model.mixer_impl='auto': the Pallas kernels on a Hopper GPU (where they are
# tested and timed), the XLA chunked forms elsewhere.
print("jax", jax.__version__, "on", jax.devices()[0].device_kind, "- log-linear Mamba-2 runs",
      "its Pallas kernel" if mixer_dispatch("auto", "loglinear_mamba2", has_kernel=True).kernel
      else "its XLA form")

# %% [markdown]
# ## The Fenwick hierarchy
# Query t sees source s <= t at level `bit_length(t XOR s)`: level 0 is the token itself, and
# level l >= 1 is a bucket of 2^(l-1) consecutive sources, non-empty when bit l-1 of t is set.
# Each level is one state; the query weights the levels with its own scalars lambda_t^(l), so
# the whole layer is `O = (A o M) V` with `M[t, s] = lambda_t^(level(t, s))`: a hierarchical
# matrix.

# %%
T_DRAW = 16
levels_TS = np.asarray(level_matrix(T_DRAW))
L = num_levels(T_DRAW)
lam_TL = np.random.default_rng(0).uniform(0.2, 1.0, (T_DRAW, L))

fig = plt.figure(figsize=(12, 4.2), layout="constrained")
grid = fig.add_gridspec(2, L + 2, width_ratios=[3, 3] + [1] * L)
ax = fig.add_subplot(grid[:, 0])
shown = np.ma.masked_less(levels_TS, 0)
ax.imshow(shown, cmap="viridis")
for t, s in zip(*np.nonzero(levels_TS >= 0)):
  ax.text(s, t, levels_TS[t, s], ha="center", va="center", fontsize=6, color="w")
ax.set(title="level(t, s)", xlabel="source s", ylabel="query t")
ax = fig.add_subplot(grid[:, 1])
ax.imshow(np.ma.masked_where(levels_TS < 0, lam_TL[np.arange(T_DRAW)[:, None],
                                                    np.maximum(levels_TS, 0)]), cmap="magma")
ax.set(title="M[t, s] for random lambda", xlabel="source s")
for level in range(L):
  ax = fig.add_subplot(grid[0 if level < (L + 1) // 2 else 1, 2 + level % ((L + 1) // 2)])
  ax.imshow(levels_TS == level, cmap="Greys")
  ax.set(title=f"level {level}", xticks=[], yticks=[])
plt.show()

# %% [markdown]
# ## The decode state grows as log T
# Decoding keeps one K x V state per level and, before token t, merges the levels below
# `ctz(t)` into the next one (the carry of a binary counter). Here is the whole model's decode
# cache per sequence, from the models' own `init_cache` (shapes only, nothing allocated), for
# the ~125M configurations of `configs/architectures.py`: attention's KV cache grows with T,
# Mamba-2 and Gated DeltaNet keep a constant state, their log-linear variants
# `num_levels(T) = ceil(log2 T) + 1` states.

# %%
ARCHS = ("transformer", "mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn")
SEQ_LENS_STATE = [2**k for k in range(4, 11)] if TINY else [2**k for k in range(8, 18)]


def cache_bytes(arch: str, seq_len: int) -> int:
  """Bytes of the decode cache of one sequence of seq_len tokens (bf16 keys and values)."""
  cfg = architecture_config(arch, "tiny" if TINY else None)
  model_cfg = ModelConfig.from_dict(dict(cfg.model.to_dict(), vocab_size=64,
                                         max_seq_len=seq_len))
  mixer = nnx.eval_shape(lambda: make_mixer(model_cfg.mixers[0], model_cfg, rngs=nnx.Rngs(0)))
  cache = jax.eval_shape(lambda: mixer.init_cache(1, seq_len, jnp.bfloat16))
  per_layer = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
  return per_layer * model_cfg.num_layers


fig, ax = plt.subplots(figsize=(6.5, 4))
for arch in ARCHS:
  ax.plot(SEQ_LENS_STATE, [cache_bytes(arch, t) / 2**20 for t in SEQ_LENS_STATE], marker="o",
          label=arch, ls="-" if arch.startswith("loglinear") else "--")
ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="decode cache (MiB)",
       title="decode state per sequence" + (" (tiny models)" if TINY else " (~125M models)"))
ax.set_xscale("log", base=2)
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Associative recall: linear against log-linear
# Multi-query associative recall (MQAR): key-value pairs, then the keys again; the model must
# recall each key's value. At equal width a single recurrent state fills up as the pairs
# outnumber what it holds; the log-linear model has up to `num_levels(T)` such states. This is the
# paper's synthetic test at toy scale (`configs/mqar_sweep.py`): one-layer Gated DeltaNet and
# log-linear Gated DeltaNet with the same 1024-number state per level, 256-token rows, 16 to 64
# pairs, 2000 steps each at learning rate 3e-3. Six training runs, a GPU's work; from a shell:
# `python -m experiments.run_mixer_experiments mqar_long --mixers gdn,loglinear_gdn
# --kv 16,32,64 --steps 2000 --set optim.learning_rate=3e-3`.

# %%
sweep = argparse.Namespace(
    mixers=["gdn", "loglinear_gdn"], kv=[4] if TINY else [16, 32, 64], tag="",
    steps=10 if TINY else 2000, workdir=tempfile.mkdtemp(prefix="lloglin_mqar_"),
    set=(["seq_len=16", "model.max_seq_len=16", "batch_size=16", "train.eval_steps=2",
          "data.mqar.num_val_examples=32"] if TINY else ["optim.learning_rate=3e-3"]))
records = run_mixer_experiments.mqar(sweep, "" if TINY else ",long")
table, fig = run_mixer_experiments.mqar_report(records)
print("\n".join(table))
display(fig)

# %% [markdown]
# ## Speed: the kernel, the XLA form and attention
# Throughput of one mixer call, forward and backward (a training step's work), at a fixed number
# of tokens per call: attention's cost per token grows with T, log-linear attention's as log T.
# On a GPU the rows are lloglin's Pallas kernel for log-linear Mamba-2, its XLA chunked form, and
# causal attention (cuDNN and XLA). On a CPU there is no kernel to time: Pallas runs in
# interpret mode, an emulator, so the notebook checks there that the kernel computes what the
# XLA form computes and times the XLA forms only; on a GPU the kernel's curve is the point (on an
# H200 it overtook cuDNN attention at 32K tokens: `benchmarks/RESULTS.md`).

# %%
if ON_GPU:
  HEADS, DIM, TOKENS = 16, 128, 65536
  SEQ_LENS = [1024, 2048, 4096, 8192, 16384, 32768]
  ROWS = [("log-linear Mamba-2, Pallas kernel", "loglinear_mamba2", "pallas"),
          ("log-linear Mamba-2, XLA form", "loglinear_mamba2", "xla"),
          ("attention, cuDNN", "attention", "cudnn"), ("attention, XLA", "attention", "xla")]
else:
  HEADS, DIM = (2, 16) if TINY else (4, 64)
  TOKENS = 256 if TINY else 8192
  SEQ_LENS = [64, 128] if TINY else [256, 512, 1024, 2048, 4096]
  ROWS = [("log-linear Mamba-2, XLA form", "loglinear_mamba2", "xla"),
          ("attention, XLA", "attention", "xla")]
  x = bench_mixers.jax_inputs(SEQ_LENS[0], SEQ_LENS[0], HEADS, DIM, jax.random.key(0))
  kernel = jax.jit(bench_mixers.jax_case("loglinear_mamba2", "pallas", x, interpret=True)[0])
  xla = jax.jit(bench_mixers.jax_case("loglinear_mamba2", "xla", x)[0])
  args = (x["q"], x["k"], x["v"], x["g"], x["lam"])
  gap = jnp.max(jnp.abs(kernel(*args).astype(jnp.float32) - xla(*args).astype(jnp.float32)))
  print(f"Pallas kernel (interpret mode) against the XLA form at T = {SEQ_LENS[0]}: max |diff| "
        f"{float(gap):.3g} (bfloat16 inputs)")

throughput = {}
for T in SEQ_LENS:
  x = bench_mixers.jax_inputs(TOKENS, T, HEADS, DIM, jax.random.key(T))
  for label, mixer, impl in ROWS:
    timer = lambda: bench_mixers.time_jax(*bench_mixers.jax_case(mixer, impl, x), backward=True,
                                          repeats=1 if TINY else 3, budget_s=0.02 if TINY else 0.5)
    row = bench_mixers.measure(label, TOKENS, T, "fwdbwd", timer, mixer, impl)
    if row.mtok_s:
      throughput.setdefault(label, []).append((T, row.mtok_s * 1e6))

fig, ax = plt.subplots(figsize=(6.5, 4))
for label, points in throughput.items():
  ax.plot(*zip(*points), "o-", label=label)
ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="tokens / s (fwd + bwd)",
       title=f"{HEADS} heads x {DIM}, {TOKENS} tokens per call, {jax.devices()[0].device_kind}")
ax.set_xscale("log", base=2)
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
plt.show()
