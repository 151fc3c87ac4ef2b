"""Optimizer-state memory and step time: AdamW vs GaLore (and other low-rank methods).

Each method runs in its own process so the device's peak-memory statistics are its own:
  python -m benchmarks.bench_optimizer_memory --shape 1b --methods adamw,galore --rank 512
  python -m benchmarks.bench_optimizer_memory --shape smoke        # seconds, on CPU
Prints one JSON line per method and, with --out, writes them all to a JSON file.
"""

import argparse
import json
import os
import subprocess
import sys
from types import SimpleNamespace as NS

SHAPES = {  # Llama-style decoders: (d_model, layers, heads, kv_heads, mlp_dim, vocab)
    "1b": (2048, 16, 16, 8, 5632, 32000),
    "smoke": (64, 2, 2, 2, 128, 256),
}


def optim_config(method: str, rank: int) -> NS:
  return NS(name=method, learning_rate=1e-4, warmup_steps=0, min_lr_ratio=0.1, b1=0.9, b2=0.95,
            eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0, rank=rank, refresh_every=200)


def run_one(method: str, shape: str, rank: int, steps: int, batch: int, seq: int) -> dict:
  import jax
  import numpy as np

  from benchmarks.timing import synthetic_batches, time_train_steps
  from lloglin import optim
  from lloglin.models import ModelConfig, build_model, count_params
  from lloglin.training.step import make_program

  d, layers, heads, kv, mlp, vocab = SHAPES[shape]
  model = build_model(ModelConfig(vocab_size=vocab, d_model=d, num_layers=layers, num_heads=heads,
                                  num_kv_heads=kv, head_dim=d // heads, mlp_dim=mlp,
                                  max_seq_len=seq, dtype="bfloat16", tie_embeddings=False))
  n_params = count_params(model)
  program = make_program(optim_config(method, rank), model, num_steps=steps)
  state = program.state
  del model
  groups = optim.optimizer_state_bytes(state["opt_state"], state[program.trained],
                                       projections=state.get("projections"))
  # Step 0 (untimed) compiles, and takes GaLore's first SVD.
  state, times, m = time_train_steps(program, synthetic_batches(vocab, batch, seq, steps + 1))
  stats = jax.devices()[0].memory_stats() or {}
  return {"method": method, "shape": shape, "rank": rank, "params": n_params,
          "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
          "step_ms_median": 1e3 * float(np.median(times)), "loss": float(m["loss"]),
          "optimizer_state_bytes": groups["state_total"],
          "optimizer_state_low_rank_bytes": groups["state_low_rank"],
          "projection_bytes": groups["projections"],
          "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
          "bytes_in_use_after": stats.get("bytes_in_use"), "batch": batch, "seq_len": seq}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shape", default="smoke", choices=sorted(SHAPES))
  p.add_argument("--methods", default="adamw,galore")
  p.add_argument("--rank", type=int, default=512)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=512)
  p.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one method here
  p.add_argument("--out", default="")
  a = p.parse_args()
  if a.one:
    print(json.dumps(run_one(a.one, a.shape, a.rank, a.steps, a.batch, a.seq_len)), flush=True)
    return
  results = []
  for method in a.methods.split(","):
    args = [sys.executable, "-m", "benchmarks.bench_optimizer_memory", "--one", method,
            "--shape", a.shape, "--rank", str(a.rank), "--steps", str(a.steps),
            "--batch", str(a.batch), "--seq_len", str(a.seq_len)]
    out = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode:
      print(out.stderr[-3000:], file=sys.stderr)
      raise SystemExit(f"{method} failed")
    results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(results[-1]), flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
