"""GDN's forward state scan alone, the Pallas-Triton kernel against the Mosaic GPU one
(pallas_kernels.gdn.chunkwise_mgpu), timed in one process on one GPU.

  python -m benchmarks.bench_gdn_state_scan                    # T = 8K and 32K, 65,536 tokens
  python -m benchmarks.bench_gdn_state_scan --mosaic_block_v 64 --seqlens 8192

Inputs as bench_mixers' GDN rows: 65,536 tokens per call (B = 65536 / T), 16 heads x 128, bf16
K, W and U, float32 log-decays, an initial state, the final state returned, chunks of 64, aligned
rows. The Triton scan runs with the block_v that gdn_chunked picks by default
(linear_recurrence.launch_config of GDN_CONFIG); the Mosaic scan with each --mosaic_block_v. Each
row prints milliseconds per call (median, benchmarks.timing), million tokens/s and the Mosaic
outputs' relative difference from the Triton ones (h, Vn, final state; bf16 rounding is ~1e-3).
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.bench_mixers import TOKENS, time_jax
from pallas_kernels.gdn import chunkwise
from pallas_kernels.linear_recurrence import GDN_CONFIG, launch_config


def scan_inputs(tokens, T, H, D, key):
  """k, w, u (bf16), g (float32, [B, H, T]) and a float32 initial state; w rows of norm <= 1/2
  (W = T diag(beta e^G) K is of that order) so that the states stay finite."""
  B = tokens // T
  ks = jax.random.split(key, 5)
  unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  k = unit(jax.random.normal(ks[0], (B, T, H, D)))
  w = unit(jax.random.normal(ks[1], (B, T, H, D))) * jax.random.uniform(ks[2], (B, T, H, 1)) / 2
  u = jax.random.normal(ks[3], (B, T, H, D))
  g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, H, T)))
  init = jax.random.normal(ks[0], (B, H, D, D))
  return k.astype(jnp.bfloat16), w.astype(jnp.bfloat16), u.astype(jnp.bfloat16), g, init


def scan_fn(cfg, H, V, C, interpret):
  def fn(k, w, u, g, init):
    L = chunkwise.launch(k, H, V, None, C, cfg, interpret)
    return chunkwise.state_scan(L, k, w, u, g, init, with_final=True)
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
  p.add_argument("--interpret", action="store_true", help="CPU smoke run (interpret mode)")
  args = p.parse_args(argv)
  H, D, C = args.heads, args.dim, args.chunk_size
  print(f"# device: {jax.devices()[0].device_kind}; {args.tokens} tokens, {H} heads x {D}, bf16")
  print(f"{'T':>6} {'backend':>8} {'block_v':>7} {'ms':>9} {'Mtok/s':>8} {'rel diff':>9}")
  for T in args.seqlens:
    x = scan_inputs(args.tokens, T, H, D, jax.random.key(0))
    triton_cfg = launch_config(None, GDN_CONFIG, x[0].shape[0] * H, D)
    cfgs = [triton_cfg] + [GDN_CONFIG._replace(block_v=bv, backend="mosaic")
                           for bv in args.mosaic_block_v]
    ref = None
    for cfg in cfgs:
      fn = scan_fn(cfg, H, D, C, args.interpret)
      out = jax.jit(fn)(*x)
      diff = "" if ref is None else f"{rel_diff(out, ref):9.1e}"
      ref = out if ref is None else ref
      s = time_jax(fn, x, backward=False)
      print(f"{T:>6} {cfg.backend:>8} {cfg.block_v:>7} {s * 1e3:9.3f} "
            f"{args.tokens / s / 1e6:8.2f} {diff}", flush=True)


if __name__ == "__main__":
  main()
