"""End-to-end training throughput of ~350M LMs: tokens/s and model FLOPs utilisation (MFU).

  python3 benchmarks/bench_train_step.py --archs transformer,loglinear_mamba2 --seq_len 16384
  python3 benchmarks/bench_train_step.py --archs transformer,path_fox --seq_len 4096
  python3 benchmarks/bench_train_step.py --size smoke --seq_len 64 --tokens 256  # CPU

One AdamW train step (bf16 compute, fp32 parameters, the trainer's jitted step) on random
tokens, median over --steps after a compile step, every architecture in this one process.
Mixers run with model.mixer_impl / attention_impl = "auto": Pallas kernels on Hopper where
lloglin has them, cuDNN attention for 16-bit compute.

MFU = model FLOPs per second / --peak_tflops (989: H100/H200 SXM dense bf16). Model FLOPs per
token = 6 x (parameters in matmuls, LM head included, embedding lookup excluded) plus, for softmax
and PaTH attention layers, the causal score and value products 6 x T x heads x head_dim per
layer (fwd 2 x, bwd 4 x; half of T x T is masked). Linear-time mixers' state products are not
counted (they are small next to their projections at these sizes), so their MFU is a lower
bound. PaTH's Householder work is not counted either.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from types import SimpleNamespace as NS  # noqa: E402

ARCHS = ("transformer", "mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn", "path", "path_fox")
ATTENTION_LIKE = {"attention", "path", "path_fox"}
# d_model, layers, heads, head dim, MLP, vocab: GPT-2 medium with SwiGLU (374M with the untied
# head). Mamba-2 models have no MLP and 44 layers instead (Mamba-2 370M has 48), which matches
# the Transformer's parameter count within 1% for log-linear Mamba-2.
SIZES = {"350m": dict(d_model=1024, num_layers=24, num_heads=16, head_dim=64, mlp_dim=2816,
                      vocab_size=32000),
         "smoke": dict(d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128,
                       vocab_size=256)}


def model_config(arch: str, size: str, seq_len: int):
  from lloglin.models import ModelConfig
  s = dict(SIZES[size])
  mixer = "attention" if arch == "transformer" else arch
  options = {}
  if mixer.endswith("mamba2"):
    s.update(num_layers=s["num_layers"] * 11 // 6, mlp_dim=0)
    options = {mixer: {"d_state": 128 if size == "350m" else 16, "expand": 2}}
  elif mixer.endswith("gdn"):
    options = {mixer: {"num_heads": s["num_heads"] // 2, "head_dim": 2 * s["head_dim"],
                       "expand_v": 1}}
  return ModelConfig(num_kv_heads=s["num_heads"], layer_pattern=mixer, max_seq_len=seq_len,
                     dtype="bfloat16", tie_embeddings=False, mixer_options=options, **s)


def matmul_params(model) -> int:
  """Parameters that enter a matmul: every weight with ndim >= 2 except the embedding table."""
  from flax import nnx
  from lloglin.optim import path_str
  import jax
  flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
  return sum(x.size for path, x in flat if x.ndim >= 2 and "embed" not in path_str(path))


def flops_per_token(cfg, n_matmul: int, seq_len: int) -> float:
  attention_layers = sum(m in ATTENTION_LIKE for m in cfg.mixers)
  return 6 * n_matmul + 6 * seq_len * cfg.num_heads * cfg.head_dim * attention_layers


def run(arch: str, args) -> dict:
  import jax
  import numpy as np

  from benchmarks.timing import synthetic_batch, time_train_steps
  from lloglin.models import build_model, count_params
  from lloglin.training.step import make_program

  cfg = model_config(arch, args.size, args.seq_len)
  model = build_model(cfg)
  n_params, n_matmul = count_params(model), matmul_params(model)
  optim_cfg = NS(name="adamw", learning_rate=1e-4, warmup_steps=0, min_lr_ratio=0.1, b1=0.9,
                 b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0)
  program = make_program(optim_cfg, model, num_steps=args.steps + 1)
  del model
  batch = args.tokens // args.seq_len
  _, times, metrics = time_train_steps(
      program, synthetic_batch(cfg.vocab_size, batch, args.seq_len), args.steps)
  step_s = statistics.median(times)
  tokens_s = batch * args.seq_len / step_s
  mfu = tokens_s * flops_per_token(cfg, n_matmul, args.seq_len) / (args.peak_tflops * 1e12)
  return dict(arch=arch, params=n_params, matmul_params=n_matmul, seq_len=args.seq_len,
              batch=batch, step_ms=1e3 * step_s, tokens_per_s=tokens_s, mfu=mfu,
              loss=float(metrics["loss"]), device=jax.devices()[0].device_kind,
              step_ms_spread=1e3 * float(np.ptp(times)))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--archs", default="transformer,loglinear_mamba2")
  p.add_argument("--size", default="350m", choices=sorted(SIZES))
  p.add_argument("--seq_len", type=int, default=16384)
  p.add_argument("--tokens", type=int, default=32768, help="tokens per step (batch x seq_len)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--peak_tflops", type=float, default=989.0)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  archs = args.archs.split(",")
  unknown = sorted(set(archs) - set(ARCHS))
  if unknown:
    p.error(f"--archs: unknown {unknown}; choose from {list(ARCHS)}")
  if args.tokens % args.seq_len:
    p.error(f"--tokens={args.tokens} is not a multiple of --seq_len={args.seq_len}")
  rows = []
  for arch in archs:
    try:
      rows.append(run(arch, args))
    except Exception as e:  # e.g. out of memory: report it and time the others
      rows.append(dict(arch=arch, seq_len=args.seq_len,
                       error=f"{type(e).__name__}: {str(e)[:300]}"))
    print(json.dumps(rows[-1]), flush=True)
  base = next((r for r in rows if r["arch"] == "transformer" and "tokens_per_s" in r), None)
  print("| arch | params | T | batch | step ms | tokens/s | MFU | x Transformer |")
  print("|" + " --- |" * 8)
  for r in rows:
    if "error" in r:
      print(f"| {r['arch']} | - | {r['seq_len']} | - | - | {r['error'][:60]} | - | - |")
      continue
    ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
    print(f"| {r['arch']} | {r['params'] / 1e6:.0f}M | {r['seq_len']} | {r['batch']} | "
          f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | {ratio} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
