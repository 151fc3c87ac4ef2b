"""GDN's two state scans alone (chunkwise.state_scan and state_scan_bwd), the Pallas-Triton
kernels against the Mosaic GPU ones (pallas_kernels.gdn.chunkwise_mgpu), timed in one process.

  python -m benchmarks.bench_gdn_state_scan                    # T = 8K and 32K, 65,536 tokens
  python -m benchmarks.bench_gdn_state_scan --scans fwd --mosaic_block_v 64 --seqlens 8192

Inputs as bench_mixers' GDN rows: 65,536 tokens per call (B = 65536 / T), 16 heads x 128, bf16
Q, K, W, U, dO and dVl, float32 log-decays, an initial state and a final-state cotangent (so the
state in- and outputs run too), chunks of 64, aligned rows. The Triton scans run with the block_v
that gdn_chunked picks by default (linear_recurrence.launch_config of GDN_CONFIG); the Mosaic
scans with each --mosaic_block_v (the backward halves a block that does not fit in SMEM). Each
row prints milliseconds per call (median, benchmarks.timing), million tokens/s and the Mosaic
outputs' largest relative difference from the Triton ones (bf16 rounding: ~1e-3).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.bench_mixers import TOKENS, time_jax
from pallas_kernels.gdn import chunkwise
from pallas_kernels.linear_recurrence import GDN_CONFIG, launch_config


def scan_inputs(tokens, T, H, D, key):
  """(fwd args, bwd args) of the two scans: bf16 [B, T, H, D] streams (q, k unit rows; w rows of
  norm <= 1/2, the order of W = T diag(beta e^G) K, so that the states stay finite), float32
  log-decays [B, H, T] and [B, H, D, D] states."""
  B = tokens // T
  ks = jax.random.split(key, 8)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  normal = lambda k, *s: jax.random.normal(k, s)  # noqa: E731
  bf16 = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
  q, k = bf16(unit(normal(ks[0], B, T, H, D))), bf16(unit(normal(ks[1], B, T, H, D)))
  w = bf16(unit(normal(ks[2], B, T, H, D)) * jax.random.uniform(ks[3], (B, T, H, 1)) / 2)
  u, do, dvl = (bf16(normal(x, B, T, H, D)) for x in jax.random.split(ks[4], 3))
  g = jax.nn.log_sigmoid(normal(ks[5], B, H, T))
  init, dfinal = normal(ks[6], B, H, D, D), normal(ks[7], B, H, D, D)
  return (k, w, u, g, init), (q, k, w, g, do, dvl, dfinal)


def scan_fn(scan, cfg, H, V, C, interpret):
  """The forward ('fwd') or backward ('bwd') scan of chunkwise under launch config cfg."""
  def fn(*args):
    L = chunkwise.launch(args[0], H, V, None, C, cfg, interpret)
    if scan == 'fwd':
      return chunkwise.state_scan(L, *args, with_final=True)
    return chunkwise.state_scan_bwd(L, *args)
  return fn


def rel_diff(xs, ys):
  return max(float(np.linalg.norm(np.asarray(x, np.float32) - np.asarray(y, np.float32))
                   / np.linalg.norm(np.asarray(y, np.float32))) for x, y in zip(xs, ys))


def ints(text):
  return [int(x) for x in text.split(",") if x]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seqlens", type=ints, default=[8192, 32768])
  p.add_argument("--tokens", type=int, default=TOKENS)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--chunk_size", type=int, default=64)
  p.add_argument("--mosaic_block_v", type=ints, default=[32, 64, 128])
  p.add_argument("--scans", type=lambda t: [x for x in t.split(",") if x], default=["fwd", "bwd"])
  p.add_argument("--interpret", action="store_true", help="CPU smoke run (interpret mode)")
  args = p.parse_args(argv)
  if not set(args.scans) <= {"fwd", "bwd"}:
    p.error(f"--scans {','.join(args.scans)}: expected fwd and/or bwd")
  H, D, C = args.heads, args.dim, args.chunk_size
  print(f"# device: {jax.devices()[0].device_kind}; {args.tokens} tokens, {H} heads x {D}, bf16")
  print(f"{'T':>6} {'scan':>4} {'backend':>8} {'block_v':>7} {'ms':>9} {'Mtok/s':>8} "
        f"{'rel diff':>9}")
  for T in args.seqlens:
    inputs = dict(zip(("fwd", "bwd"), scan_inputs(args.tokens, T, H, D, jax.random.key(0))))
    triton_cfg = launch_config(None, GDN_CONFIG, args.tokens // T * H, D)._replace(backend="triton")
    cfgs = [triton_cfg] + [GDN_CONFIG._replace(block_v=bv, backend="mosaic")
                           for bv in args.mosaic_block_v]
    for scan in args.scans:
      x, ref = inputs[scan], None
      for cfg in cfgs:
        fn = scan_fn(scan, cfg, H, D, C, args.interpret)
        out = jax.jit(fn)(*x)
        diff = "" if ref is None else f"{rel_diff(out, ref):9.1e}"
        ref = out if ref is None else ref
        s = time_jax(fn, x, backward=False)
        print(f"{T:>6} {scan:>4} {cfg.backend:>8} {cfg.block_v:>7} {s * 1e3:9.3f} "
              f"{args.tokens / s / 1e6:8.2f} {diff}", flush=True)


if __name__ == "__main__":
  main()
