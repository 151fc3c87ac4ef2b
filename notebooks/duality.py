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
# # GaLore and one-sided LoRA: one trajectory, two memories
# *On the Duality between Gradient Transformations and Adapters* (arXiv 2502.13811). Train with
# a fixed linear map S applied to the gradient, the optimizer's state kept in the small space
# (GaLore: `theta <- theta - lr S^T u(S grad)`), or train an adapter `theta = theta_0 + S^T phi`
# with `theta_0` frozen (one-sided LoRA with its projection frozen): fed the same data with the
# same optimizer, the two follow the same parameter trajectory. This notebook trains both side by
# side, measures how far apart they are at every step, shows the caveat that breaks the
# equality, and counts the optimizer memory of each. The derivation and caveats:
# `docs/literature.md#optimizer-duality`.

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
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root, where configs/ is
# LLOGLIN_NOTEBOOK_TINY=1: tiny sizes, for the test suite's CPU run.
TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"

from benchmarks.bench_optimizer_memory import SHAPES
from configs import duality
from configs.base import set_model_size
from lloglin import optim
from lloglin.models import ModelConfig, build_model
from lloglin.training import trainer
from lloglin.training.step import effective_params, make_program

print("jax", jax.__version__, "on", jax.devices()[0].device_kind)

# %% [markdown]
# ## The setting
# `configs/duality.py`: a byte-level LM on tiny_shakespeare (downloaded by tensorflow-datasets),
# every 2-D kernel but the embedding projected at rank 32 with new projections every 200 steps,
# no weight decay (decoupled weight decay acts on theta in one view and on phi in the other, so
# the config turns it off). GaLore takes its projection from the SVD of the gradient; the adapter
# view takes the same SVD of the same gradient for its frozen factor.

# %%
def config(method: str, *, clip: float):
  cfg = duality.get_config(method)
  cfg.optim.grad_clip_norm = clip
  if TINY:  # a tiny model, a few steps and a refresh, on a small local text
    cfg.seq_len, cfg.batch_size = 32, 4
    set_model_size(cfg, d_model=32, num_layers=1, num_heads=2, head_dim=16, mlp_dim=64)
    cfg.optim.rank, cfg.optim.refresh_every, cfg.optim.warmup_steps = 8, 6, 2
    cfg.train.num_steps = 12
    cfg.data.path = TEXT
  return cfg


if TINY:
  TEXT = os.path.join(tempfile.mkdtemp(prefix="lloglin_duality_"), "text.txt")
  with open(TEXT, "w") as f:
    f.write("Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"
            * 100)
reference = config("galore", clip=0.0)
train_data, _ = trainer.make_datasets(reference)
batches = [next(train_data) for _ in range(reference.train.num_steps)]
print(f"{reference.train.num_steps} steps of {reference.batch_size} x {reference.seq_len} bytes, "
      f"rank {reference.optim.rank}, new projections every {reference.optim.refresh_every} steps")

# %% [markdown]
# ## Side by side
# Each method gets a fresh copy of the same initial model and the same batches, one step at a
# time. After every step we compare the parameters the two models run with (for the adapter:
# `theta_0 + S^T phi`, merged into `theta_0` at each refresh), relative to how far GaLore has
# moved from the initial parameters.

# %%
METHODS = ("galore", "onesided_lora")
theta_0 = nnx.split(trainer.init_model(reference, train_data.vocab_size)[0], nnx.Param, ...)[1]
distance = jax.jit(lambda a, b: optax.tree.norm(jax.tree.map(jnp.subtract, a, b)))


def side_by_side(clip: float):
  """Per-step losses of both methods and the distance between their parameters."""
  programs, states = {}, {}
  for method in METHODS:
    cfg = config(method, clip=clip)
    model, _ = trainer.init_model(cfg, train_data.vocab_size)
    programs[method] = make_program(cfg.optim, model, num_steps=cfg.train.num_steps,
                                    first_batch=lambda: batches[0])
    states[method] = programs[method].state
  losses, gaps = {m: [] for m in METHODS}, []
  for batch in batches:
    for method in METHODS:
      states[method], metrics = programs[method].train_step(states[method], batch)
      losses[method].append(float(metrics["loss"]))
    galore, lora = (effective_params(states[m]) for m in METHODS)
    gaps.append(float(distance(galore, lora) / distance(galore, theta_0)))
  return losses, gaps, states


clips = {"no clipping": 0.0,
         "clipping as configured": duality.get_config().optim.grad_clip_norm}
runs = {name: side_by_side(clip) for name, clip in clips.items()}

fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
steps = np.arange(1, len(batches) + 1)
for name, (losses, gaps, _) in runs.items():
  for method in METHODS:
    ax_loss.plot(steps, losses[method], ls="-" if method == "galore" else ":",
                 lw=1.5 if method == "galore" else 3, label=f"{method}, {name}")
  ax_gap.plot(steps, gaps, "o-", ms=3, label=name)
for step in range(reference.optim.refresh_every, len(batches), reference.optim.refresh_every):
  ax_gap.axvline(step + 1, color="gray", ls=":", lw=1)
ax_loss.set(xlabel="step", ylabel="training loss", title="the two views' losses")
ax_loss.legend(fontsize=7)
ax_gap.set(xlabel="step (dotted: new projections)", yscale="log",
           ylabel="|theta_galore - theta_lora| / |theta_galore - theta_0|",
           title="distance between the two trajectories")
ax_gap.legend(fontsize=8)
plt.show()

# %% [markdown]
# Without clipping the distance stays at float32 rounding: one trajectory. Global-norm clipping
# sees the full gradient in GaLore's view and the adapter's gradient in the other, so the
# clipped runs part as soon as clipping acts (the experiment behind `configs/duality.py` keeps
# clipping on, and its final losses differ in the third decimal: `benchmarks/RESULTS.md`).
#
# ## Optimizer memory
# AdamW keeps two moments per parameter. GaLore keeps them at rank r for the projected matrices,
# plus its projections; the adapter keeps them for phi, its frozen projections living in the train
# state instead. `lloglin.optim.optimizer_state_bytes` counts them for the model trained above and,
# from shapes alone (`jax.eval_shape`, nothing allocated), for a ~1B Llama-style decoder at
# rank 512 (`benchmarks/bench_optimizer_memory.py`'s `1b` shape).

# %%
GROUPS = {"state_full": "moments of unprojected parameters",
          "state_low_rank": "low-rank moments", "projections": "projections"}


def state_bytes(state, trained: str) -> dict:
  """Bytes by group of what the method keeps beside the parameters: the optimizer state, and an
  adapter's projections (in the train state), counted as projections."""
  groups = optim.optimizer_state_bytes(state["opt_state"], state[trained],
                                       projections=state.get("projections"))
  if "projections" in state:
    extra = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state["projections"]))
    groups["projections"] += extra
    groups["state_total"] += extra
  return groups


def abstract_state(model_cfg: ModelConfig, method: str, rank: int):
  """The train state of `method` for a model of model_cfg, as shapes only."""
  optim_cfg = duality.get_config(method).optim
  optim_cfg.rank = rank
  batch = {k: jnp.zeros((1, 8), jnp.float32 if k == "loss_mask" else jnp.int32)
           for k in ("inputs", "targets", "segment_ids", "positions", "loss_mask")}
  build = lambda: make_program(optim_cfg, build_model(model_cfg), num_steps=1,
                               first_batch=lambda: batch).state
  return jax.eval_shape(build), "adapters" if method in optim.ADAPTER_NAMES else "params"


d, layers, heads, kv, mlp, vocab = SHAPES["smoke" if TINY else "1b"]
big = ModelConfig(vocab_size=vocab, d_model=d, num_layers=layers, num_heads=heads,
                  num_kv_heads=kv, head_dim=d // heads, mlp_dim=mlp, max_seq_len=8,
                  dtype="bfloat16", tie_embeddings=False)
trained = runs["no clipping"][2]
small_adamw = make_program(config("adamw", clip=0.0).optim,
                           trainer.init_model(reference, train_data.vocab_size)[0], num_steps=1)
tables = {
    "the model above": {"adamw": state_bytes(small_adamw.state, "params"),
                        "galore": state_bytes(trained["galore"], "params"),
                        "onesided_lora": state_bytes(trained["onesided_lora"], "adapters")},
    f"{d}-wide, {layers}-layer decoder, rank {16 if TINY else 512}": {
        method: state_bytes(*abstract_state(big, method, 16 if TINY else 512))
        for method in ("adamw", "galore", "onesided_lora")}}

fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for ax, (title, table) in zip(axes, tables.items()):
  bottom = np.zeros(len(table))
  for group, label in GROUPS.items():
    mib = np.array([groups[group] / 2**20 for groups in table.values()])
    ax.bar(list(table), mib, bottom=bottom, label=label)
    bottom += mib
  params = next(iter(table.values()))["params"] / 2**20
  ax.axhline(params, color="k", ls=":", label="the parameters themselves")
  ax.set(title=title, ylabel="MiB")
  ax.legend(fontsize=7)
plt.show()
for title, table in tables.items():
  print(f"{title}: " + ", ".join(f"{method} {groups['state_total'] / 2**20:.2f} MiB"
                                 for method, groups in table.items()))
