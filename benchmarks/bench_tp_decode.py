"""Decode tokens/s under tensor parallelism: standard vs ladder vs parallel residual.

  python benchmarks/bench_tp_decode.py                  # 1b and 8b, batch 1..64, TP = all GPUs
  python benchmarks/bench_tp_decode.py --models 8b --batches 1,4 --modes standard,ladder
  python benchmarks/bench_tp_decode.py --smoke          # CPU, 8 fake devices, tiny shape

Llama shapes (random bf16 weights; speed does not depend on the values): `1b` is Llama-3.2-1B
(d 2048, 16 layers, 32 heads, 8 kv heads, MLP 8192, vocab 128256), `8b` is Llama-3.1-8B (d 4096,
32 layers, 32/8 heads, head dim 128, MLP 14336). TP degree = every device present unless --tp;
one GPU gives TP=1 sanity figures (no all-reduce, all modes equal up to noise).

Each configuration: caches of prompt_len + new_tokens positions (the first prompt_len treated as
a filled prompt), then `new_tokens` greedy steps in ONE jitted lax.fori_loop (no Python dispatch
per token), timed over --repeats runs after a compile/warm-up run; tokens/s = batch x new_tokens /
median seconds. --hlo_dir writes each program's optimised HLO and prints, for the ladder and
standard programs, how many all-reduces have matmuls scheduled between their start and done
(every row carries that count: `all_reduces_overlapping_matmuls` of `all_reduces`).
Results: one JSON line per configuration on stdout and in --out.
"""

import argparse
import json
import os
import sys
import time

SHAPES = {
    "tiny": dict(vocab_size=256, d_model=64, num_layers=4, num_heads=8, num_kv_heads=8,
                 head_dim=8, mlp_dim=128),
    "1b": dict(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
               head_dim=64, mlp_dim=8192, tie_embeddings=True, rope_theta=500000.0),
    "8b": dict(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
               head_dim=128, mlp_dim=14336, tie_embeddings=False, rope_theta=500000.0),
}
# The latency-hiding scheduler overlaps async all-reduces with compute.
GPU_FLAGS = "--xla_gpu_enable_latency_hiding_scheduler=true"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="1b,8b", help=f"comma-separated, from {sorted(SHAPES)}")
  p.add_argument("--modes", default="standard,ladder,parallel")
  p.add_argument("--batches", default="1,4,8,16,32,64")
  p.add_argument("--tp", type=int, default=0, help="tensor-parallel degree (0 = all devices)")
  p.add_argument("--prompt_len", type=int, default=1024)
  p.add_argument("--new_tokens", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--out", default="", help="append JSON lines here")
  p.add_argument("--hlo_dir", default="", help="write optimised HLO text here")
  p.add_argument("--smoke", action="store_true",
                 help="CPU with 8 fake devices, the tiny shape, a few tokens (for tests)")
  args = p.parse_args(argv)
  if args.smoke:
    args.models, args.prompt_len, args.new_tokens, args.repeats = "tiny", 8, 4, 1
    args.dtype = "float32"
    if args.batches == p.get_default("batches"):
      args.batches = "1,4"
  return args


def _set_xla_flags(smoke: bool):
  """Before jax is imported: fake CPU devices for --smoke, the latency-hiding scheduler on GPU."""
  flags = os.environ.get("XLA_FLAGS", "")
  if smoke:
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "xla_force_host_platform_device_count" not in flags:
      flags += " --xla_force_host_platform_device_count=8"
  else:
    flags += "".join(f" {f}" for f in GPU_FLAGS.split() if f.split("=")[0] not in flags)
  os.environ["XLA_FLAGS"] = flags.strip()


def main(argv=None):
  args = parse_args(argv)
  _set_xla_flags(args.smoke)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from lloglin.models import ModelConfig
  from lloglin.models.decoder import DecoderLM
  from lloglin.parallel import hlo, mesh as mesh_lib, tp_decode

  tp = args.tp or jax.device_count()
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=tp))
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  print(f"# {device}, TP={tp}, jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS')}",
        flush=True)
  results = []
  for name in args.models.split(","):
    max_len = args.prompt_len + args.new_tokens
    base = ModelConfig(**SHAPES[name], max_seq_len=max_len, dtype=args.dtype,
                       param_dtype=args.dtype)
    _, state = tp_decode.init_sharded_params(base, mesh)
    for mode in args.modes.split(","):
      cfg = ModelConfig.from_dict(dict(base.to_dict(), residual_mode=mode))
      graphdef, _ = nnx.split(nnx.eval_shape(lambda: DecoderLM(cfg, rngs=nnx.Rngs(0))))
      generate = tp_decode.make_generate(graphdef, args.new_tokens)
      for batch in [int(b) for b in args.batches.split(",")]:
        caches = tp_decode.init_cache(cfg, batch, max_len, mesh=mesh)
        tokens = jnp.ones((batch,), jnp.int32)
        pos = jnp.full((batch,), args.prompt_len, jnp.int32)
        with jax.set_mesh(mesh):
          t0 = time.perf_counter()
          compiled = generate.lower(state, caches, tokens, pos).compile()
          compile_s = time.perf_counter() - t0
          out, caches = compiled(state, caches, tokens, pos)
          jax.block_until_ready(out)
          times = []
          for _ in range(args.repeats):
            t0 = time.perf_counter()
            out, caches = compiled(state, caches, tokens, pos)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
        seconds = float(np.median(times))
        row = dict(model=name, mode=mode, batch=batch, tp=tp, device=device,
                   prompt_len=args.prompt_len, new_tokens=args.new_tokens, dtype=args.dtype,
                   tokens_per_s=batch * args.new_tokens / seconds,
                   ms_per_step=1e3 * seconds / args.new_tokens, compile_s=compile_s)
        text = compiled.as_text()
        reports = hlo.all_reduce_overlap(text, match="psum")
        row["all_reduces"] = len(reports)
        row["all_reduces_overlapping_matmuls"] = sum(
            (r.scheduled_between if r.scheduled_between is not None
             else r.independent_matmuls) > 0 for r in reports)
        if args.hlo_dir:
          os.makedirs(args.hlo_dir, exist_ok=True)
          with open(os.path.join(args.hlo_dir, f"{name}_{mode}_b{batch}.hlo"), "w") as f:
            f.write(text)
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
          with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        del caches
  _print_table(results)
  return results


def _print_table(results):
  print("\n| model | batch | " + " | ".join(sorted({r["mode"] for r in results})) +
        " | ladder / standard |")
  modes = sorted({r["mode"] for r in results})
  print("|---|---|" + "---|" * (len(modes) + 1))
  for model in dict.fromkeys(r["model"] for r in results):
    for batch in dict.fromkeys(r["batch"] for r in results if r["model"] == model):
      tps = {r["mode"]: r["tokens_per_s"] for r in results
             if r["model"] == model and r["batch"] == batch}
      ratio = (f"x{tps['ladder'] / tps['standard']:.3f}" if {"ladder", "standard"} <= set(tps)
               else "")
      print(f"| {model} | {batch} | " + " | ".join(f"{tps.get(m, float('nan')):.1f}"
                                                   for m in modes) + f" | {ratio} |")


if __name__ == "__main__":
  main()
