"""When does a small Transformer break through on MQAR? Sweeps a few default-config candidates.

Runs without ml_collections (plain namespaces), so it works on the bare GPU machines too. From
the repository root:

  python -m experiments.mqar_phase_sweep --steps 3000 --out sweep.json
"""

import argparse
import json
import time
from types import SimpleNamespace as NS

import jax
from flax import nnx

from lloglin.data import make_dataset
from lloglin.models import ModelConfig, build_model
from lloglin import optim
from lloglin.training.step import init_state, make_eval_step, make_train_step

CANDIDATES = {
    "d128_kv8_lr3e-3": dict(d=128, kv=8, vocab=256, lr=3e-3),
    "d128_kv4_lr3e-3": dict(d=128, kv=4, vocab=128, lr=3e-3),
    "d64_kv4_lr3e-3": dict(d=64, kv=4, vocab=128, lr=3e-3),
    "d128_kv8_lr1e-3_wd": dict(d=128, kv=8, vocab=256, lr=1e-3, wd=0.1),
    "d128_kv8_lr3e-3_bs128": dict(d=128, kv=8, vocab=256, lr=3e-3, bs=128),
    "d128_kv8_lr3e-3_4heads": dict(d=128, kv=8, vocab=256, lr=3e-3, heads=4),
    # cheaper on CPU:
    "d64_kv8_lr3e-3_bs128": dict(d=64, kv=8, vocab=256, lr=3e-3, bs=128),
    "d128_kv4_seq32_bs128": dict(d=128, kv=4, vocab=128, lr=3e-3, bs=128, seq=32),
    "d64_kv4_seq32_bs256": dict(d=64, kv=4, vocab=128, lr=3e-3, bs=256, seq=32),
    "d128_kv8_lr3e-3_bs256": dict(d=128, kv=8, vocab=256, lr=3e-3, bs=256),
}


def run(name, c, steps, eval_every):
  data = NS(source="mqar", mqar=NS(vocab_size=c["vocab"], num_kv_pairs=c["kv"], power_a=0.01,
                                    random_non_queries=True, num_train_examples=100_000,
                                    num_val_examples=1_000))
  seq = c.get("seq", 64)
  kw = dict(seq_len=seq, batch_size=c.get("bs", 64), seed=0)
  train_ds = make_dataset(data, split="train", **kw)
  val_ds = make_dataset(data, split="validation", **kw)
  heads = c.get("heads", 2)
  model = build_model(ModelConfig(vocab_size=train_ds.vocab_size, d_model=c["d"], num_layers=2,
                                  num_heads=heads, num_kv_heads=heads, head_dim=c["d"] // heads,
                                  mlp_dim=2 * c["d"], max_seq_len=seq))
  optim_cfg = NS(name="adamw", learning_rate=c["lr"], warmup_steps=50, min_lr_ratio=0.1, b1=0.9,
                 b2=0.95, eps=1e-8, weight_decay=c.get("wd", 0.0), grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(optim_cfg, nnx.state(model, nnx.Param), num_steps=steps)
  graphdef, state = init_state(model, tx)
  step_fn, eval_fn = make_train_step(graphdef, tx), make_eval_step(graphdef)
  curve, t0 = [], time.perf_counter()
  for step in range(1, steps + 1):
    state, _ = step_fn(state, next(train_ds))
    if step % eval_every == 0:
      val_ds.set_state({"epoch": 0, "index": 0})
      tot = [jax.device_get(eval_fn(state["params"], state["rest"], next(val_ds)))
             for _ in range(8)]
      acc = sum(float(t["correct_sum"]) for t in tot) / sum(float(t["count"]) for t in tot)
      curve.append((step, acc))
  print(name, f"{time.perf_counter() - t0:.1f}s", [f"{s}:{a:.3f}" for s, a in curve], flush=True)
  return curve


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--eval_every", type=int, default=250)
  p.add_argument("--only", default="")
  p.add_argument("--out", default="")
  a = p.parse_args()
  names = a.only.split(",") if a.only else list(CANDIDATES)
  results = {n: run(n, CANDIDATES[n], a.steps, a.eval_every) for n in names}
  if a.out:
    json.dump({"backend": jax.default_backend(), "results": results}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
  main()
