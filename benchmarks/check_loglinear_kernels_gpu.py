"""GPU check of pallas_kernels.loglinear: bf16 correctness against the XLA chunked form, then
throughput (Mtok/s, 65,536 tokens per call) against the XLA form and, when fla is importable,
fla's chunk_log_linear_attn / chunk_simple_gla timed in the same run (carry/peers_h200.py style).

Usage on the GPU machine: PYTHONPATH=. python3 benchmarks/check_loglinear_kernels_gpu.py
[correct] [gdn] [time] [sweep] [quick]   (env: SEQLENS=8192, HEADS=16, HEAD_DIM=128).
Prints one line per figure.
"""

import functools
import math
import os
import sys

import jax
import jax.numpy as jnp

from benchmarks.timing import median_seconds, rel_error
from lloglin.ops import loglinear as ops_loglinear
from lloglin.ops import ssd as ops_ssd
from pallas_kernels import loglinear as pk

H, D, TOKENS = int(os.environ.get('HEADS', 16)), int(os.environ.get('HEAD_DIM', 128)), 65536
SEQLENS = [int(t) for t in os.environ.get('SEQLENS', '8192').split(',')]


def inputs(B, T, G, Hh, K, V, L, dtype, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 6)
  q = jax.random.normal(ks[0], (B, T, G, K), dtype)
  k = jax.random.normal(ks[1], (B, T, G, K), dtype)
  v = jax.random.normal(ks[2], (B, T, Hh, V), dtype)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, Hh), jnp.float32))
  lam = jax.nn.softplus(jax.random.normal(ks[4], (B, T, Hh, L), jnp.float32))
  return q, k, v, g, lam


def grads(fn, args, do):
  loss = lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * do)
  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args)))))(*args)


def correct():
  for (B, T, G, Hh, K, V) in [(2, 1024, 1, 8, 128, 128), (4, 2048, 1, 8, 64, 64),
                              (2, 2000, 2, 8, 128, 64)]:
    L = math.ceil(math.log2(T)) + 1
    args = inputs(B, T, G, Hh, K, V, L, jnp.bfloat16)
    ref_args = [a.astype(jnp.float32) for a in args]
    do = jax.random.normal(jax.random.PRNGKey(9), (B, T, Hh, V), jnp.float32)
    scale = K ** -0.5
    for name, kfn, rfn, n in [
        ('loglinear', lambda *a: pk.loglinear_ssd_chunked(*a, scale=scale),
         lambda *a: ops_loglinear.loglinear_ssd_chunked(*a, scale=scale), 5),
        ('ssd', lambda *a: pk.ssd_chunked(*a, scale=scale),
         lambda *a: ops_ssd.ssd_chunked(*a, scale=scale), 4)]:
      o = jax.jit(kfn)(*args[:n])
      r = jax.jit(rfn)(*ref_args[:n])
      print(f'CORRECT {name} B={B} T={T} G={G} H={Hh} K={K} V={V} fwd rel={rel_error(o, r):.2e} '
            f'finite={bool(jnp.all(jnp.isfinite(o.astype(jnp.float32))))}', flush=True)
      _, gk = grads(kfn, args[:n], do)
      _, gr = grads(rfn, ref_args[:n], do)
      print(f'CORRECT {name} B={B} T={T} grads ' + ' '.join(
          f'd{a}={rel_error(x, y):.2e}' for a, x, y in zip('qkvgl', gk, gr)), flush=True)


def correct_gdn():
  """Gated DeltaNet kernels vs the XLA chunked forms: bf16 and fp32 inputs (a real bug shows in
  both), then log-linear GDN with lambda one-hot per level (which level goes wrong)."""
  from lloglin.ops import delta
  B, T, Hh, K = 2, 1024, 8, 128
  L = math.ceil(math.log2(T)) + 1
  q, k, v, g, lam = inputs(B, T, Hh, Hh, K, K, L, jnp.float32)
  norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q, k = norm(q), norm(k)
  beta = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(7), (B, T, Hh)))
  scale = K ** -0.5
  cases = [('gdn', pk.gdn_chunked, delta.gdn_chunked, (q, k, v, g, beta)),
           ('loglinear_gdn', pk.loglinear_gdn_chunked, ops_loglinear.loglinear_gdn_chunked,
            (q, k, v, g, beta, lam))]
  cases += [(f'loglinear_gdn.level{x}', pk.loglinear_gdn_chunked,
             ops_loglinear.loglinear_gdn_chunked,
             (q, k, v, g, beta, jnp.broadcast_to(jax.nn.one_hot(x, L), lam.shape)))
            for x in range(L)]
  for name, kfn, rfn, args in cases:
    with jax.default_matmul_precision('highest'):
      r = jax.jit(functools.partial(rfn, scale=scale))(*args)
    for dtype in (jnp.float32, jnp.bfloat16):
      kargs = [a.astype(dtype) if a.ndim == 4 and a.shape[-1] == K else a for a in args]
      try:
        o = jax.jit(functools.partial(kfn, scale=scale))(*kargs)
        print(f'CORRECT {name} {jnp.dtype(dtype).name} fwd rel={rel_error(o, r):.2e} finite='
              f'{bool(jnp.all(jnp.isfinite(o.astype(jnp.float32))))}', flush=True)
      except Exception as e:  # noqa: BLE001 (report and go on)
        print(f'FAIL {name} {jnp.dtype(dtype).name}: {type(e).__name__}: {str(e)[:600]}',
              flush=True)


def report(tag, fn, *args):
  try:
    ms = 1e3 * median_seconds(lambda: fn(*args))
    print(f'ROW {tag:<60} {TOKENS / ms / 1e3:9.3f} Mtok/s  {ms:8.3f} ms', flush=True)
  except Exception as e:  # keep going: one failing figure must not hide the others
    print(f'FAIL {tag}: {type(e).__name__}: {str(e)[:400]}', flush=True)


def fwd_and_fwdbwd(tag, fn, args):
  report(f'{tag}.fwd', jax.jit(fn), *args)
  loss = lambda *a: jnp.sum(fn(*a).astype(jnp.float32))
  report(f'{tag}.fwdbwd', jax.jit(jax.grad(loss, argnums=tuple(range(len(args))))), *args)


def timing(configs):
  for T in SEQLENS:
    B, L = TOKENS // T, math.ceil(math.log2(T)) + 1
    args = inputs(B, T, H, H, D, D, L, jnp.bfloat16)
    scale = D ** -0.5
    for cfg in configs:
      fwd_and_fwdbwd(f'pallas_loglinear.T{T}.bv{cfg.block_v}w{cfg.num_warps}s{cfg.num_stages}',
                     lambda *a, cfg=cfg: pk.loglinear_ssd_chunked(*a, scale=scale, config=cfg),
                     args)
    cfg = configs[0]
    fwd_and_fwdbwd(f'pallas_ssd.T{T}.bv{cfg.block_v}w{cfg.num_warps}',
                   lambda *a: pk.ssd_chunked(*a, scale=scale, config=cfg), args[:4])
    fwd_and_fwdbwd(f'xla_loglinear.T{T}',
                   lambda *a: ops_loglinear.loglinear_ssd_chunked(*a, scale=scale), args)
    fwd_and_fwdbwd(f'xla_ssd.T{T}', lambda *a: ops_ssd.ssd_chunked(*a, scale=scale), args[:4])
    del args
  fla()


def quick():
  """Default config, aligned (no segment ids) and packed mode (all-ones segment ids)."""
  for T in SEQLENS:
    B, L = TOKENS // T, math.ceil(math.log2(T)) + 1
    args = inputs(B, T, H, H, D, D, L, jnp.bfloat16)
    seg = jnp.ones((B, T), jnp.int32)
    scale = D ** -0.5
    for fn, n in ((pk.loglinear_ssd_chunked, 5), (pk.ssd_chunked, 4)):
      fwd_and_fwdbwd(f'pallas_{fn.__name__}.T{T}', lambda *a, fn=fn: fn(*a, scale=scale), args[:n])
      fwd_and_fwdbwd(f'pallas_{fn.__name__}.packed.T{T}',
                     lambda *a, fn=fn: fn(*a, scale=scale, segment_ids_BT=seg), args[:n])


def fla():
  """fla's chunk_log_linear_attn and chunk_simple_gla at SEQLENS, with bench_mixers' inputs and
  timer (so both scripts time the peers alike)."""
  from benchmarks import bench_mixers
  for T in SEQLENS:
    cases = bench_mixers.torch_cases(TOKENS, T, H, D, ("mamba2", "loglinear_mamba2"))
    for name, (_, fn, ins) in cases.items():
      for bwd in (False, True):
        tag = f'{name}.T{T}.{"fwdbwd" if bwd else "fwd"}'
        try:
          ms = 1e3 * bench_mixers.time_torch(fn, ins, backward=bwd)
          print(f'ROW {tag:<60} {TOKENS / ms / 1e3:9.3f} Mtok/s  {ms:8.3f} ms', flush=True)
        except Exception as e:  # noqa: BLE001 (report and go on)
          print(f'FAIL {tag}: {type(e).__name__}: {str(e)[:300]}', flush=True)


if __name__ == '__main__':
  what = sys.argv[1:] or ['correct', 'time']
  print('devices', jax.devices(), flush=True)
  if 'correct' in what:
    correct()
  if 'gdn' in what:
    correct_gdn()
  if 'quick' in what:
    quick()
  if 'time' in what or 'sweep' in what:
    configs = [pk.KernelConfig()]
    if 'sweep' in what:
      configs += [pk.KernelConfig(block_v=bv, num_warps=w, num_stages=s)
                  for bv, w, s in [(16, 4, 1), (64, 8, 1), (32, 8, 2)]]
    timing(configs)
