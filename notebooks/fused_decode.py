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
# # Fused batch-1 decoding (FlashFormer)
# *FlashFormer: Whole-Model Kernels for Efficient Low-Batch Inference* (arXiv 2505.22758): at
# batch 1 a decode step reads every weight once and does little arithmetic with it, so its floor
# is memory bandwidth, `(weight bytes + KV-cache bytes) / bandwidth`. An ordinary step launches
# several kernels per layer, each paying a launch and a pipeline ramp; one persistent kernel for
# the whole model pays them once and streams the next layer's weights while the current one
# computes. This notebook decodes with lloglin's fused kernel and times it against the plain
# jitted step on the device it runs on. The kernel, in full: `docs/algorithms/fused_decode.md`.

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
import jax
import matplotlib.pyplot as plt
import numpy as np

if os.path.basename(os.getcwd()) == "notebooks":
  os.chdir("..")  # the repository root: benchmarks/ imports from there
# LLOGLIN_NOTEBOOK_TINY=1: tiny sizes, for the test suite's CPU run.
TINY = os.environ.get("LLOGLIN_NOTEBOOK_TINY") == "1"

from benchmarks import bench_decode
from lloglin.inference.generate import generate, resolve_decode_impl
from lloglin.layers.registry import kernel_dispatch
from lloglin.models import ModelConfig, build_model, count_params

ON_GPU = jax.default_backend() == "gpu"
# The kernel runs compiled on a GPU and in Pallas interpret mode (an emulator) elsewhere.
print("jax", jax.__version__, "on", jax.devices()[0].device_kind, "- the fused kernel runs",
      "in interpret mode" if kernel_dispatch(True).interpret else "compiled")

# %% [markdown]
# ## Generation through the fused kernel
# `generate(..., impl="fused")` prefills the prompt with the ordinary chunked forward, restacks
# its KV caches into the kernel's layout, then runs one kernel launch per new token. It serves
# one prompt of a Llama-style attention-only model (RMSNorm, GQA attention with RoPE, SwiGLU);
# `impl="auto"` picks it where it was measured faster than the plain step (a Hopper GPU). Greedy
# decoding of the same random model both ways (on a GPU in bfloat16, where a random model's
# nearly flat logits can tie and a tie can break either way):

# %%
SMALL = TINY or not ON_GPU  # interpret mode is slow: a small model off a GPU
model = build_model(ModelConfig(
    vocab_size=256, d_model=64 if SMALL else 512, num_layers=2 if SMALL else 8, num_heads=4,
    num_kv_heads=2, head_dim=16 if SMALL else 128, mlp_dim=128 if SMALL else 1536,
    max_seq_len=128, dtype="bfloat16" if ON_GPU else "float32"))
prompt = [[1, 17, 42, 99, 7]]
new_tokens = 8 if SMALL else 32
plain = generate(model, prompt, new_tokens, impl="plain")[0]
fused = generate(model, prompt, new_tokens, impl="fused")[0]
print(f"{count_params(model):,} parameters; impl='auto' would run",
      repr(resolve_decode_impl("auto", model, 1)))
print("plain:", plain)
print("fused:", fused)
print(f"{sum(a == b for a, b in zip(plain, fused))} of {new_tokens} tokens agree")

# %% [markdown]
# ## Time per token against the memory roofline
# `benchmarks/bench_decode.py` decodes with random weights from a KV cache already holding a
# 512-token prompt, each implementation in one jitted loop (no Python per token), and divides the
# bytes a step must read by the device-to-device copy bandwidth it measures: the roofline. On a
# GPU it times a 138M and a 1.24B Llama shape in bfloat16; on a CPU the kernel can only run in
# interpret mode, so it times a tiny model: the emulated kernel is slower than the plain step, and
# the roofline means nothing there. On an H200 the fused kernel ran about twice
# as fast as the plain step (`benchmarks/RESULTS.md`).

# %%
rows = bench_decode.main(["--models", "138m,1b", "--formats", "bf16", "--repeats", "3",
                          "--check", "16"] if ON_GPU else ["--smoke"])
timed = [r for r in rows if r["impl"] != "check"]
models = list(dict.fromkeys(r["model"] for r in timed))
impls = list(dict.fromkeys(r["impl"] for r in timed))
labels = {"jax_jit_step": "plain jitted step", "fused_kernel": "fused kernel"}

fig, axes = plt.subplots(1, 2 if ON_GPU else 1, figsize=(11 if ON_GPU else 6, 4), squeeze=False,
                         layout="constrained")
width = 0.8 / len(impls)
for i, impl in enumerate(impls):
  found = {r["model"]: r for r in timed if r["impl"] == impl}
  backend = next(r["backend"] for r in found.values()) or "XLA"
  x = np.arange(len(models)) + i * width
  ms = [found[m]["ms_per_token"] if m in found else np.nan for m in models]
  bars = axes[0, 0].bar(x, ms, width, label=f"{labels.get(impl, impl)} ({backend})")
  axes[0, 0].bar_label(bars, fmt="%.3g", fontsize=7)
  if ON_GPU:
    axes[0, 1].bar(x, [100 * found[m]["roofline_fraction"] if m in found else np.nan
                       for m in models], width, label=labels.get(impl, impl))
centres = np.arange(len(models)) + width * (len(impls) - 1) / 2
axes[0, 0].set(xticks=centres, xticklabels=models, ylabel="ms / token", yscale="log",
               title=f"batch-1 decode, {jax.devices()[0].device_kind}"
               + ("" if ON_GPU else " (kernel in interpret mode)"))
axes[0, 0].legend(fontsize=8)
if ON_GPU:
  for m, c in zip(models, centres):
    roofline = next(r["roofline_ms"] for r in timed if r["model"] == m)
    axes[0, 0].hlines(roofline, c - 0.4, c + 0.4, colors="k", linestyles=":")
  axes[0, 1].set(xticks=centres, xticklabels=models, ylabel="% of the memory roofline",
                 ylim=(0, 100), title="bytes read / copy bandwidth / time")
  axes[0, 1].legend(fontsize=8)
plt.show()
for r in rows:
  if r["impl"] == "check":
    print(f"{r['model']}: fused logits against the plain step over {r['steps_checked']} steps: "
          f"max relative error {r['rel_max']:.2e}, greedy agreement {r['argmax_agreement']:.3f}")
