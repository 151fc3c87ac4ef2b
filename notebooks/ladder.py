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
# # Ladder Residual
# *Ladder-Residual: Parallelism-Aware Architecture for Accelerating Large Model Inference with
# Communication Overlapping* (arXiv 2501.06589). Under tensor parallelism every attention and MLP
# module ends in an all-reduce R, and the next module waits for it:
#
#     standard   x_i = x_{i-1} + R(h_i(x_{i-1}))
#     ladder     x_i = x_{i-1} + R(h_i(x_{i-2}))     h_i reads the stream one module stale
#
# so in a ladder model R(h_i) can run while h_{i+1} computes. This notebook trains the residual
# modes on the same data, then compiles a tensor-parallel model on fake devices and finds, in
# the compiled program, the matmuls each all-reduce can overlap. The wiring, in full:
# `lloglin/models/ladder.py` and `docs/literature.md#ladder-residual`.

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
# Four fake CPU devices for the tensor-parallel compile below; XLA reads this flag when jax
# starts (a GPU runtime keeps its GPU as the default device).
TP = 4
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={TP}").strip()

import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root, where configs/ is
# LLOGLIN_NOTEBOOK_TINY=1: tiny sizes, for the test suite's CPU run.
TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"

from configs import ladder
from configs.base import set_model_size
from lloglin.models import ModelConfig, build_model
from lloglin.parallel import hlo
from lloglin.parallel import mesh as mesh_lib
from lloglin.parallel import sharding
from lloglin.training.metrics import read_metrics
from lloglin.training.trainer import train

print("jax", jax.__version__, "on", jax.devices()[0].device_kind, "+", len(jax.devices("cpu")),
      "CPU devices")

# %% [markdown]
# ## Does the rewiring cost quality?
# `configs/ladder.py`: a 6-layer byte-level LM on tiny_shakespeare (downloaded by
# tensorflow-datasets), 400 steps, the same data, size and optimizer in every mode. `parallel`
# is PaLM's block (attention and MLP read the same input, one all-reduce per layer). On one
# device `desync` (skipping chosen all-reduces) computes what `standard` does, so it is left out.

# %%
MODES = ("standard", "ladder", "parallel")
if TINY:  # a small local text for the test suite
  text_path = os.path.join(tempfile.mkdtemp(prefix="lloglin_ladder_"), "text.txt")
  with open(text_path, "w") as f:
    f.write("Now is the winter of our discontent made glorious summer by this sun of York.\n" * 100)

curves = {}
for mode in MODES:
  cfg = ladder.get_config(mode)
  cfg.mesh.data = 1  # one device: the fake CPU devices are for the compile below
  if TINY:
    cfg.seq_len, cfg.batch_size = 32, 4
    set_model_size(cfg, d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                   mlp_dim=64)
    cfg.train.num_steps = cfg.train.checkpoint_every = 10
    cfg.train.eval_every, cfg.train.eval_steps = 5, 1
    cfg.data.path = text_path
  workdir = tempfile.mkdtemp(prefix=f"lloglin_ladder_{mode}_")
  train(cfg, workdir)
  curves[mode] = [(r["step"], r["eval_loss"])
                  for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "eval_loss" in r]

fig, ax = plt.subplots(figsize=(6.5, 4))
for mode, points in curves.items():
  ax.plot(*zip(*points), "o-", label=f"{mode}: {points[-1][1]:.4f}")
ax.set(xlabel="step", ylabel="validation loss (nats / byte)", title="residual modes, same budget")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ## Where the all-reduce can overlap
# Compile a small decoder's forward pass tensor-parallel over the fake devices and read the
# optimised HLO (`lloglin.parallel.hlo`). For every all-reduce, count the matmuls that neither
# feed it nor wait for it: XLA is free to run those while it is in flight. In standard and
# parallel mode every matmul sits upstream or downstream of every all-reduce; in ladder mode the
# next module's matmuls are free. A CPU has no asynchronous collectives, so this is the data-flow
# view; on several GPUs, XLA's latency-hiding scheduler
# (`--xla_gpu_enable_latency_hiding_scheduler=true`) places those matmuls between each
# `all-reduce-start` and its `all-reduce-done`, which `tests/models/test_ladder.py` checks on 2
# GPUs and `benchmarks/bench_tp_decode.py` times.

# %%
cpu_mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=TP), devices=jax.devices("cpu")[:TP])


def compiled_hlo(mode: str) -> str:
  """Optimised HLO text of a 3-layer decoder's forward pass, tensor-parallel over cpu_mesh."""
  model = build_model(ModelConfig(vocab_size=64, d_model=32, num_layers=3, num_heads=8,
                                  num_kv_heads=4, head_dim=4, mlp_dim=64, max_seq_len=32,
                                  residual_mode=mode, attention_impl="xla"))
  graphdef, state = nnx.split(model)
  state = sharding.shard_state(state, model, cpu_mesh)
  tokens = jnp.zeros((2, 16), jnp.int32)
  with jax.set_mesh(cpu_mesh):
    lowered = jax.jit(lambda st, t: nnx.merge(graphdef, st).hidden(t)).lower(state, tokens)
  return lowered.compile().as_text()


texts = {mode: compiled_hlo(mode) for mode in MODES}
reports = {mode: hlo.all_reduce_overlap(text, match="psum") for mode, text in texts.items()}

fig, axes = plt.subplots(1, len(MODES), figsize=(12, 3.5), sharey=True, layout="constrained")
for ax, (mode, found) in zip(axes, reports.items()):
  bars = ax.bar(np.arange(1, len(found) + 1), [r.independent_matmuls for r in found])
  ax.bar_label(bars)
  ax.set(title=f"{mode}: {len(found)} all-reduces", xlabel="all-reduce, in program order",
         xticks=np.arange(1, len(found) + 1))
axes[0].set_ylabel("matmuls free to overlap it")
plt.show()
