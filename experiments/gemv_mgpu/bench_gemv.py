"""Batch-1 GEMV on one GPU: the Mosaic GPU kernel (experiments.gemv_mgpu.gemv_mgpu) against XLA's
`W @ x`, at the weight shapes of the decode benchmark's models, as a fraction of the copy
bandwidth measured in the same run. Run from the repository root:

  python -m experiments.gemv_mgpu.bench_gemv                       # every shape, default configs
  python -m experiments.gemv_mgpu.bench_gemv --shapes 1b_down --configs 64,128,4,4,128,256,2,2
  python -m experiments.gemv_mgpu.bench_gemv --smoke               # CPU: interpreter, toy shapes

A config is rows,tk,splits,stages (output rows per block, columns per tile, column splits, tiles
in flight); one that does not fit (shared memory, divisibility) is reported and skipped. Each row
is checked against XLA's float32 product (max error <= 1e-2 of the largest output) before it is
timed. Bytes per call = the weights (x and y are negligible). Rows go to stdout and, as JSON
lines, to --out.
"""

import argparse
import functools
import json
import os

from benchmarks.cli import int_tuples

SHAPES = {  # (N output rows, D input columns) of bench_decode.py's models, gate and up fused
    "1b_qkv": (3072, 2048), "1b_o": (2048, 2048), "1b_gate_up": (16384, 2048),
    "1b_down": (2048, 8192), "1b_head": (128256, 2048),
    "8b_qkv": (6144, 4096), "8b_gate_up": (28672, 4096), "8b_down": (4096, 14336),
    "toy": (128, 512),
}
CONFIGS = [(64, 128, 1, 4), (64, 128, 2, 4), (64, 256, 1, 4), (64, 128, 1, 8), (128, 128, 1, 4),
           (128, 128, 2, 6), (64, 256, 2, 6), (128, 64, 4, 8)]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shapes", default=",".join(s for s in SHAPES if s != "toy"))
  p.add_argument("--configs", type=int_tuples(("rows", "tk", "splits", "stages")),
                 default=CONFIGS)
  p.add_argument("--calls", type=int, default=50)
  p.add_argument("--smoke", action="store_true", help="CPU: Mosaic GPU interpreter, toy shape")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
  if unknown:
    p.error(f"--shapes: unknown {unknown}; expected some of {sorted(SHAPES)}")
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.smoke:
    os.environ["JAX_PLATFORMS"] = "cpu"
    args.shapes, args.calls = "toy", 2
  import jax
  import jax.numpy as jnp

  from benchmarks.bench_decode import copy_bandwidth
  from benchmarks.timing import median_seconds
  from experiments.gemv_mgpu.gemv_mgpu import gemv

  bandwidth = 4.3e12 if args.smoke else copy_bandwidth(jax, jnp)
  print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; device {jax.devices()[0].device_kind}",
        flush=True)
  xla = jax.jit(lambda w, x: jnp.dot(w, x, preferred_element_type=jnp.float32))
  rows = []
  for name in args.shapes.split(","):
    N, D = SHAPES[name]
    w = jax.random.normal(jax.random.key(0), (N, D), jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (D,), jnp.bfloat16)
    ref = xla(w, x)
    scale = float(jnp.abs(ref).max())
    impls = [("xla", None, xla)] + [
        ("mosaic_gemv", cfg, jax.jit(functools.partial(
            gemv, rows=cfg[0], tk=cfg[1], splits=cfg[2], stages=cfg[3], interpret=args.smoke)))
        for cfg in args.configs]
    for impl, cfg, fn in impls:
      try:
        err = float(jnp.abs(fn(w, x) - ref).max()) / scale
        if err > 1e-2:
          raise ValueError(f"max error {err:.2e} of the output scale")
        sec = median_seconds(lambda: fn(w, x), calls=args.calls)
      except Exception as e:  # noqa: BLE001 (a config that does not fit: report, go on)
        print(f"SKIP {name} {impl} {cfg}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        continue
      row = dict(shape=name, N=N, D=D, impl=impl, config=cfg, us=sec * 1e6,
                 gb_s=w.nbytes / sec / 1e9, copy_fraction=w.nbytes / sec / bandwidth,
                 max_rel_err=err)
      rows.append(row)
      print(f"ROW {name:11} {impl:12} {str(cfg):18} {row['us']:9.1f} us {row['gb_s']:7.0f} GB/s "
            f"{row['copy_fraction']:6.1%} of copy", flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(json.dumps(row) + "\n")
  return rows


if __name__ == "__main__":
  main()
