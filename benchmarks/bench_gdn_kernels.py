"""Where GDN's fwd+bwd time goes: each chunkwise kernel timed alone, the whole op, and what is
left for XLA around them; fla's chunk_gated_delta_rule beside it, kernel by kernel.

  python -m benchmarks.bench_gdn_kernels                          # T = 2K, 8K, 32K
  python -m benchmarks.bench_gdn_kernels --seqlens 8192 --backends triton,mosaic --profile
  python -m benchmarks.bench_gdn_kernels --seqlens 8192 --profile --loglinear   # + log-linear GDN

Inputs as bench_mixers' GDN rows: 65,536 tokens per call (B = 65536 / T), 16 heads x 128, bf16
unit-norm q and k, v, float32 log-decays and betas, chunks of 64, one document per row passed as
segment_ids (as the trainer does). For each --backends entry (the KernelConfig backend: 'triton',
'mosaic' for every kernel's Mosaic GPU form, 'auto' the launch default) the six kernels of
pallas_kernels.gdn.chunkwise (ut_transform, state_scan, output; output_bwd, state_scan_bwd,
chunk_bwd) run alone on the
inputs the op would give them, each jitted and timed (benchmarks.timing's median), then
`gdn_chunked`'s fwd+bwd: "outside the kernels" is the whole minus the kernels' sum (padding,
layouts, gates, the lax.cond of aligned / packed rows, dtype casts: what XLA runs around them).

--profile also traces both fwd+bwd calls with torch.profiler (CUPTI sees every kernel of the
process, XLA's and Pallas' as well as torch's) and prints the device time per kernel name,
largest first, for lloglin and for fla (fla-core importable and a GPU needed; its rows are
skipped otherwise).
"""

import argparse
import collections

import jax
import jax.numpy as jnp

from benchmarks.bench_mixers import TOKENS, fwd_bwd, jax_inputs, time_jax, torch_cases
from pallas_kernels.gdn import chunkwise
from pallas_kernels.linear_recurrence import GDN_CONFIG, launch_config

KERNELS = ('ut_transform', 'state_scan', 'output', 'output_bwd', 'state_scan_bwd', 'chunk_bwd')


def kernel_calls(x, cfg, chunk_size, interpret):
  """name -> (fn, args) of each chunkwise kernel on the inputs and residuals of x (bench_mixers'
  jax_inputs): the forward's T, W, U, h, Vn and the backward's dO, dVl, dh, dVn computed once."""
  q, k, v = x['qn'], x['kn'], x['v']
  q = (q.astype(jnp.float32) * q.shape[-1] ** -0.5).astype(q.dtype)
  g, beta = (jnp.moveaxis(x[n], 1, 2) for n in ('g', 'beta'))
  H, V = v.shape[2:]
  L = chunkwise.launch(q, H, V, None, chunk_size, cfg, interpret)
  do = jax.random.normal(jax.random.key(1), v.shape, jnp.float32).astype(v.dtype)
  w, u, t = jax.jit(lambda *a: chunkwise.ut_transform(L, *a))(k, v, g, beta)
  h, vn = jax.jit(lambda *a: chunkwise.state_scan(L, *a))(k, w, u, g)
  dvl, _, dk_out, dg_out = jax.jit(lambda *a: chunkwise.output_bwd(L, *a))(q, k, g, h, vn, do)
  dh, dvn = jax.jit(lambda *a: chunkwise.state_scan_bwd(L, *a))(q, k, w, g, do, dvl)
  return {
      'ut_transform': (lambda *a: chunkwise.ut_transform(L, *a), (k, v, g, beta)),
      'state_scan': (lambda *a: chunkwise.state_scan(L, *a), (k, w, u, g)),
      'output': (lambda *a: chunkwise.output(L, *a, v.dtype), (q, k, g, h, vn)),
      'output_bwd': (lambda *a: chunkwise.output_bwd(L, *a), (q, k, g, h, vn, do)),
      'state_scan_bwd': (lambda *a: chunkwise.state_scan_bwd(L, *a), (q, k, w, g, do, dvl)),
      'chunk_bwd': (lambda *a: chunkwise.chunk_bwd(L, *a),
                    (k, v, g, beta, t, h, dh, vn, dvn, dk_out, dg_out)),
  }


def breakdown(x, backend, chunk_size, interpret, repeats):
  """[(name, ms)] of the six kernels and of the whole fwd+bwd under the scans' `backend`."""
  B, _, H, V = x['v'].shape
  cfg = launch_config(None, GDN_CONFIG, B * H, V)._replace(backend=backend)
  rows = [(name, 1e3 * time_jax(fn, args, backward=False, repeats=repeats))
          for name, (fn, args) in kernel_calls(x, cfg, chunk_size, interpret).items()]
  fn, args = whole_op(x, cfg, chunk_size, interpret)
  return rows + [('fwd+bwd', 1e3 * time_jax(fn, args, backward=True, repeats=repeats))]


def whole_op(x, cfg, chunk_size, interpret, loglinear=False):
  """(fn, args): gdn_chunked (loglinear: loglinear_gdn_chunked) as bench_mixers times it
  (segment_ids of one document per row) under launch config cfg."""
  from pallas_kernels.gdn import gdn_chunked, loglinear_gdn_chunked
  segment_ids = jnp.ones(x['v'].shape[:2], jnp.int32)
  kw = dict(segment_ids_BT=segment_ids, chunk_size=chunk_size, scale=x['qn'].shape[-1] ** -0.5,
            config=cfg, interpret=interpret)
  args = (x['qn'], x['kn'], x['v'], x['g'], x['beta'])
  if loglinear:
    return (lambda *a: loglinear_gdn_chunked(*a, **kw)), args + (x['lam'],)
  return (lambda *a: gdn_chunked(*a, **kw)), args


def print_breakdown(T, backend, rows):
  kernels = sum(ms for name, ms in rows if name in KERNELS)
  total = dict(rows)['fwd+bwd']
  for name, ms in rows + [('outside the kernels', total - kernels)]:
    print(f"{T:>6} {backend:>7} {name:>20} {ms:9.3f} {100 * ms / total:6.1f}%", flush=True)


def profile(call, steps=5):
  """{kernel name: device ms per call} of `call` (run `steps` times) under torch.profiler."""
  import torch
  from torch.profiler import ProfilerActivity
  jax.block_until_ready(call())
  torch.cuda.synchronize()
  with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(steps):
      jax.block_until_ready(call())
    torch.cuda.synchronize()
  times = collections.Counter()
  for event in prof.events():
    if str(event.device_type).endswith('CUDA'):
      times[event.name] += event.time_range.elapsed_us() / 1e3 / steps
  return times


def print_profile(label, times, top):
  total = sum(times.values())
  print(f"# {label}: {total:.3f} ms of kernels per fwd+bwd", flush=True)
  for name, ms in times.most_common(top):
    print(f"  {ms:8.3f} ms {100 * ms / total:5.1f}%  {name[:110]}", flush=True)


def main(argv=None):
  """{(T, backend): [(kernel, ms)], the whole fwd+bwd last}."""
  ints = lambda t: [int(v) for v in t.split(',') if v]  # noqa: E731
  names = lambda t: [v for v in t.split(',') if v]  # noqa: E731
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--seqlens', type=ints, default=[2048, 8192, 32768])
  p.add_argument('--tokens', type=int, default=TOKENS)
  p.add_argument('--heads', type=int, default=16)
  p.add_argument('--dim', type=int, default=128)
  p.add_argument('--chunk_size', type=int, default=64)
  p.add_argument('--backends', type=names, default=['auto'],
                 help="KernelConfig backends: auto, triton, mosaic")
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--profile', action='store_true', help='per-kernel device time (torch.profiler)')
  p.add_argument('--top', type=int, default=15, help='kernel names printed per --profile call')
  p.add_argument('--loglinear', action='store_true',
                 help="with --profile, also log-linear GDN's fwd+bwd (its levels as GDN runs)")
  p.add_argument('--interpret', action='store_true', help='CPU smoke run (interpret mode)')
  args = p.parse_args(argv)
  if bad := set(args.backends) - {'auto', 'triton', 'mosaic'}:
    p.error(f"--backends {','.join(sorted(bad))}: expected auto, triton or mosaic")
  print(f"# device: {jax.devices()[0].device_kind}; {args.tokens} tokens, {args.heads} heads x "
        f"{args.dim}, bf16, chunks of {args.chunk_size}")
  print(f"{'T':>6} {'backend':>7} {'kernel':>20} {'ms':>9} {'share':>7}")
  results = {}
  for T in args.seqlens:
    x = jax_inputs(args.tokens, T, args.heads, args.dim, jax.random.key(T))
    for backend in args.backends:
      results[T, backend] = breakdown(x, backend, args.chunk_size, args.interpret, args.repeats)
      print_breakdown(T, backend, results[T, backend])
    if args.profile:
      for backend in args.backends:
        B, _, H, V = x['v'].shape
        cfg = launch_config(None, GDN_CONFIG, B * H, V)._replace(backend=backend)
        for loglinear in (False, True)[:1 + args.loglinear]:
          fn, fargs = whole_op(x, cfg, args.chunk_size, args.interpret, loglinear)
          do = jnp.ones_like(x['v'])
          step = jax.jit(fwd_bwd(fn))
          label = 'log-linear GDN' if loglinear else 'GDN'
          print_profile(f"T={T} lloglin {label} ({backend})",
                        profile(lambda: step(fargs, do)), args.top)
      for name, (_, fn, ins) in torch_cases(args.tokens, T, args.heads, args.dim,
                                            ['gdn']).items():
        print_profile(f"T={T} {name}", profile(lambda: torch_backward(fn, ins)), args.top)
  if {'triton', 'mosaic'} <= set(args.backends):
    print_faster(results, args.seqlens)
  return results


def print_faster(results, seqlens):
  """Per kernel, Triton's time over Mosaic's at each T, and the kernels Mosaic ran faster at
  every T: what chunkwise.AUTO_MOSAIC would list by this run."""
  faster = []
  for name in KERNELS:
    ratios = [dict(results[T, 'triton'])[name] / dict(results[T, 'mosaic'])[name]
              for T in seqlens]
    print(f"# {name:>16}: Mosaic speed-up over Triton " + " / ".join(
        f"{r:.2f}x (T={T})" for r, T in zip(ratios, seqlens)), flush=True)
    if min(ratios) > 1:
      faster.append(name)
  print(f"# faster on Mosaic GPU at every T: {tuple(faster)} "
        f"(chunkwise.AUTO_MOSAIC: {chunkwise.AUTO_MOSAIC})", flush=True)


def torch_backward(fn, inputs):
  """One fwd+bwd of a torch case (ones as the output's cotangent; `profile` synchronises)."""
  for t in inputs:
    t.grad = None
  out = fn()
  out = out[0] if isinstance(out, tuple) else out
  out.backward(out.new_ones(out.shape))


if __name__ == '__main__':
  main()
