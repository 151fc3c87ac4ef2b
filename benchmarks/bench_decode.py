"""Batch-1 decode on one GPU: the fused whole-model kernel against the plain jitted step.

  python -m benchmarks.bench_decode                       # 138m and 1b, bf16 and int8
  python -m benchmarks.bench_decode --models 1b,8b --torch  # plus torch eager / compile baselines
  python -m benchmarks.bench_decode --check 256           # plus a 256-step logits comparison
  python -m benchmarks.bench_decode --formats bf16 --backends triton,mosaic  # both kernels
  python -m benchmarks.bench_decode --backends mosaic --tilings "ring=0;ring=1"  # Mosaic SMEM ring

Random weights (speed does not depend on values), a KV cache of --max_len positions whose first
--prompt positions hold random keys/values, then --steps greedy tokens in ONE jitted
lax.fori_loop per implementation (no Python dispatch per token), median of --repeats runs after a
compile run. Roofline = (bytes of the packed weights + the cache read at the mean position) /
the device-to-device copy bandwidth measured in the same run (bytes read + written): the larger
of an XLA loop's and, when torch is importable, torch `copy_`'s. The XLA loop alone understates
the machine (benchmarks/RESULTS.md, fused decode: a fused step streamed its weights faster than
that loop copies).
--check N runs the reference and each fused variant teacher-forced on the reference's tokens for
N steps and prints the relative logits error at steps 1 and N and its maximum. Results: a table
on stdout, one JSON line per row in $OUT/bench_decode.json when OUT is set (or --out).
"""

import argparse
import dataclasses
import json
import os
import time

SHAPES = {
    "tiny": dict(vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, mlp_dim=128),
    "tiny64": dict(vocab_size=256, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=64, mlp_dim=256),  # the Mosaic GPU kernel's 64-row tiles
    "138m": dict(vocab_size=32000, d_model=768, num_layers=12, num_heads=12, num_kv_heads=12,
                 head_dim=64, mlp_dim=3072),
    "1b": dict(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
               head_dim=64, mlp_dim=8192, rope_theta=500000.0),
    "8b": dict(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
               head_dim=128, mlp_dim=14336, rope_theta=500000.0),
}
UNTIED = ("8b",)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="138m,1b", help=f"comma-separated, from {sorted(SHAPES)}")
  p.add_argument("--formats", default="bf16,int8")
  p.add_argument("--prompt", type=int, default=512)
  p.add_argument("--max_len", type=int, default=8192)
  p.add_argument("--steps", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--check", type=int, default=0, help="teacher-forced comparison steps")
  p.add_argument("--torch", action="store_true", help="also torch eager and torch.compile")
  p.add_argument("--no_fused", action="store_true", help="baselines only")
  p.add_argument("--tilings", default="",
                 help="';'-separated fused-kernel variants, each 'field=value,...' over the "
                      "backend's default tiling (e.g. 'rows=16,num_warps=8', or 'ring=0' for the "
                      "Mosaic kernel; the field "
                      "'backend=triton|mosaic' picks the kernel, else default_backend's)")
  p.add_argument("--backends", default="",
                 help="comma-separated fused backends (triton, mosaic): every variant runs on "
                      "each")
  p.add_argument("--out", default="")
  p.add_argument("--smoke", action="store_true", help="CPU, tiny shape, interpret mode")
  args = p.parse_args(argv)
  if args.smoke:
    mosaic = "mosaic" in args.backends + args.tilings
    args.models, args.formats, args.prompt = "tiny64" if mosaic else "tiny", "bf16", 8
    args.max_len = 128 if mosaic else 64
    args.steps, args.repeats, args.check = 2, 1, min(args.check, 2) or 2
  return args


def copy_bandwidth(jax, jnp, passes: int = 20):
  """Device-memory bytes/s (read + write) of `passes` in-place passes over a 2 GiB buffer in
  one jitted loop (so no dispatch is timed), best of 3 calls."""
  x = jnp.ones((1 << 30,), jnp.bfloat16)
  sweep = jax.jit(lambda x: jax.lax.fori_loop(0, passes, lambda i, x: x * jnp.bfloat16(-1), x),
                  donate_argnums=0)
  x = sweep(x).block_until_ready()
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    x = sweep(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * x.nbytes * passes / best


def torch_copy_bandwidth(repeats: int = 20):
  """Bytes/s (read + written) of torch's `copy_` between two 2 GiB bf16 buffers, median of
  `repeats` (the copy ceiling of RESULTS.md's anchors), or None without torch and a CUDA device."""
  try:
    import torch
  except ImportError:
    return None
  if not torch.cuda.is_available():
    return None
  x = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda").normal_()
  y = torch.empty_like(x)
  for _ in range(5):  # warm-up
    y.copy_(x)
  times = []
  for _ in range(repeats):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    y.copy_(x)
    end.record()
    end.synchronize()
    times.append(start.elapsed_time(end) * 1e-3)
  nbytes = 2 * x.numel() * x.element_size()
  del x, y
  torch.cuda.empty_cache()
  return nbytes / sorted(times)[len(times) // 2]


def make_generate(jax, jnp, step, steps: int):
  """Jitted greedy loop of `steps` tokens: (weights, cache, token, pos) -> (tokens, cache)."""

  def generate(w, cache, token, pos):
    def body(i, carry):
      token, cache, out = carry
      logits, cache = step(w, cache, token, pos + i)
      token = jnp.argmax(logits).astype(jnp.int32)
      return token, cache, out.at[i].set(token)

    out = jnp.zeros((steps,), jnp.int32)
    _, cache, out = jax.lax.fori_loop(0, steps, body, (token, cache, out))
    return out, cache

  return jax.jit(generate, donate_argnums=1)


def time_generate(gen, w, cache, pos, repeats: int):
  """Median seconds of one call (after a compile call); returns (seconds, cache)."""
  import jax.numpy as jnp
  token = jnp.int32(1)
  out, cache = gen(w, cache, token, pos)
  out.block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out, cache = gen(w, cache, token, pos)
    out.block_until_ready()
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2], cache


def check_logits(jax, jnp, fused, ref, w, cache, pos, steps: int):
  """Teacher-forced logits of both on the reference's greedy tokens: rel error per step."""

  def run(step, w, cache, feed):
    def body(carry, i):
      token, cache = carry
      logits, cache = step(w, cache, token, pos + i)
      nxt = jnp.argmax(logits).astype(jnp.int32) if feed is None else feed[i]
      return (nxt, cache), (logits, jnp.argmax(logits).astype(jnp.int32))
    return jax.lax.scan(body, (jnp.int32(1), cache), jnp.arange(steps))[1]

  ref_logits, ref_tokens = jax.jit(lambda w, c: run(ref, w, c, None))(w, cache)
  fused_logits, fused_tokens = jax.jit(lambda w, c, f: run(fused, w, c, f))(w, cache, ref_tokens)
  rel = (jnp.linalg.norm(fused_logits - ref_logits, axis=-1)
         / jnp.linalg.norm(ref_logits, axis=-1))
  agree = jnp.mean((fused_tokens == ref_tokens).astype(jnp.float32))
  return [float(r) for r in rel], float(agree)


def torch_step_fn(c, fmt: str, max_len: int, prompt: int):
  """A plain torch decode step (same architecture; bf16 weights, int8 dequantised per use)."""
  import torch
  import torch._dynamo
  import torch.nn.functional as F
  torch.set_grad_enabled(False)
  dev, dt = "cuda", torch.bfloat16
  L, D, H, G, K, Fd, V = (c.num_layers, c.d_model, c.num_heads, c.num_kv_heads, c.head_dim,
                          c.mlp_dim, c.vocab_size)

  def lin(n_out, n_in):
    w = torch.randn(n_out, n_in, device=dev) * n_in**-0.5
    if fmt == "int8":
      s = w.abs().amax(1) / 127  # 1-D: inductor's int8 weight-only matmul takes no other shape
      return ((w / s[:, None]).round().to(torch.int8), s.to(dt))
    return (w.to(dt), None)

  def mm(x, ws):
    w, s = ws
    return F.linear(x, w.to(dt)) * s if s is not None else F.linear(x, w)

  layers = [dict(qkv=lin((H + 2 * G) * K, D), o=lin(D, H * K), gate=lin(Fd, D), up=lin(Fd, D),
                 down=lin(D, Fd)) for _ in range(L)]
  embed = lin(V, D)
  kc = torch.randn(L, 1, G, max_len, K, device=dev, dtype=dt)
  vc = torch.randn(L, 1, G, max_len, K, device=dev, dtype=dt)
  inv = c.rope_theta ** (-torch.arange(K // 2, device=dev, dtype=torch.float32) * 2 / K)
  positions = torch.arange(max_len, device=dev)
  # Fixed addresses: CUDA graphs then neither copy the weights in per call nor refuse the cache
  # writes ("skipping cudagraphs due to mutated inputs"), as HF's static cache does.
  weights = [t for ws in [embed, *(w for lw in layers for w in lw.values())] for t in ws]
  for t in [kc, vc, inv, positions, *weights]:
    if t is not None:
      torch._dynamo.mark_static_address(t)

  def rope(x, pos):  # rotate-half, as lloglin.ops.attention.apply_rope
    ang = pos.float() * inv
    cos, sin = torch.cat([ang.cos()] * 2), torch.cat([ang.sin()] * 2)
    x1, x2 = x.float().chunk(2, -1)
    return (x.float() * cos + torch.cat([-x2, x1], -1) * sin).to(dt)

  def rms(x):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + c.norm_eps)).to(dt)

  def step(tok, pos):  # tok, pos: int64 [1] (a 0-d index would be a data-dependent int to dynamo)
    e, s = embed
    x = (e[tok].to(dt) * (s[tok] if s is not None else 1)).view(1, 1, D)
    mask = (positions <= pos)[None, None, None]
    for i, lw in enumerate(layers):
      qkv = mm(rms(x), lw["qkv"]).view(1, 1, H + 2 * G, K).transpose(1, 2)
      q, k, v = rope(qkv[:, :H], pos), rope(qkv[:, H:H + G], pos), qkv[:, H + G:]
      kc[i].index_copy_(2, pos.view(1), k)
      vc[i].index_copy_(2, pos.view(1), v)
      # GQA as H / G query rows per kv head (no `enable_gqa`, which torch.compile failed on)
      o = F.scaled_dot_product_attention(q.reshape(1, G, H // G, K), kc[i], vc[i], attn_mask=mask)
      x = x + mm(o.reshape(1, 1, H * K), lw["o"])
      h = rms(x)
      x = x + mm(F.silu(mm(h, lw["gate"])) * mm(h, lw["up"]), lw["down"])
    return mm(rms(x), embed).argmax(-1).view(1)

  return step


def time_torch(step, prompt: int, steps: int, repeats: int):
  import torch
  positions = list(torch.arange(prompt, prompt + steps, device="cuda").view(-1, 1))  # made once

  def run():
    tok = torch.ones(1, dtype=torch.long, device="cuda")
    for pos in positions:
      # a new CUDA-graph step per token; the clone keeps the token past the graph's next replay
      torch.compiler.cudagraph_mark_step_begin()
      tok = step(tok, pos).clone()
    torch.cuda.synchronize()
  run()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return sorted(times)[len(times) // 2]


def main(argv=None):
  args = parse_args(argv)
  if args.smoke:
    os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import jax.numpy as jnp
  from pallas_kernels.fused_decode import (FusedConfig, decode_step_reference, default_backend,
                                           default_mosaic_tiling, default_tiling,
                                           fused_decode_step, init_cache, num_sms,
                                           random_weights)

  out_path = args.out or (os.path.join(os.environ["OUT"], "bench_decode.json")
                          if os.environ.get("OUT") else "")
  measured = {} if args.smoke else dict(xla=copy_bandwidth(jax, jnp), torch=torch_copy_bandwidth())
  bandwidth = max((b for b in measured.values() if b), default=4.3e12)
  sources = ", ".join(f"{k} {b / 1e12:.2f}" for k, b in measured.items() if b) or "assumed"
  print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s ({sources}); device "
        f"{jax.devices()[0].device_kind}", flush=True)
  rows = []

  def record(**row):
    rows.append(row)
    print(json.dumps(row), flush=True)
    if out_path:
      with open(out_path, "a") as f:
        f.write(json.dumps(row) + "\n")

  variants = [dict(kv.split("=") for kv in v.split(",")) for v in args.tilings.split(";") if v]
  if args.backends:
    variants = [dict(v, backend=b) for b in args.backends.split(",") for v in variants or [{}]]

  def field_value(default, text):  # the field's type: int, bool (0 / 1) or str
    return text if isinstance(default, str) else type(default)(int(text))

  def fused_variant(c, overrides):
    overrides = dict(overrides)
    backend = overrides.pop("backend", None) or default_backend(c, args.max_len, args.smoke)
    tiling = (default_mosaic_tiling if backend == "mosaic" else default_tiling)(
        c, 1 if args.smoke else num_sms(), args.max_len)
    tiling = dataclasses.replace(tiling, **{k: field_value(getattr(tiling, k), v)
                                            for k, v in overrides.items()})
    return backend, tiling, lambda w, cache, tok, pos: fused_decode_step(
        w, cache, tok, pos, interpret=args.smoke, tiling=tiling, backend=backend)
  for name in args.models.split(","):
    for fmt in args.formats.split(","):
      c = FusedConfig(**SHAPES[name], weight_format=fmt)
      w = jax.jit(lambda k, c=c: random_weights(c, k, tied=name not in UNTIED))(
          jax.random.key(0))
      k, v = init_cache(c, args.max_len)
      fill = lambda x, key: x.at[:, :args.prompt].set(
          jax.random.normal(key, x[:, :args.prompt].shape, x.dtype))
      cache = (fill(k, jax.random.key(1)), fill(v, jax.random.key(2)))
      mean_pos = args.prompt + args.steps / 2
      cache_bytes = 2 * c.num_layers * mean_pos * c.num_kv_heads * c.head_dim * k.dtype.itemsize
      nbytes = w.nbytes() + cache_bytes
      roofline_ms = nbytes / bandwidth * 1e3
      base = dict(model=name, format=fmt, prompt=args.prompt, max_len=args.max_len,
                  steps=args.steps, weight_bytes=w.nbytes(), roofline_ms=roofline_ms,
                  bandwidth=bandwidth)
      impls = [("jax_jit_step", None, None, decode_step_reference)]
      if not args.no_fused:
        impls += [(f"fused_kernel{i or ''}", *fused_variant(c, v))
                  for i, v in enumerate(variants or [{}])]
      for impl, backend, tiling, step in impls:
        gen = make_generate(jax, jnp, step, args.steps)
        try:
          sec, cache = time_generate(gen, w, cache, args.prompt, args.repeats)
        except Exception as e:  # noqa: BLE001 (report and go on to the next row)
          print(f"FAIL {name} {fmt} {impl}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
          continue
        ms = sec / args.steps * 1e3
        record(**base, impl=impl, backend=backend, ms_per_token=ms, tokens_per_s=1e3 / ms,
               roofline_fraction=roofline_ms / ms,
               tiling=None if tiling is None else dataclasses.asdict(tiling))
      for impl, backend, _, step in impls[1:] if args.check else ():
        try:
          rel, agree = check_logits(jax, jnp, step, decode_step_reference, w, cache,
                                    args.prompt, args.check)
        except Exception as e:  # noqa: BLE001
          print(f"FAIL {name} {fmt} {impl} check: {type(e).__name__}: {str(e)[:2000]}",
                flush=True)
          continue
        record(**base, impl="check", checked=impl, backend=backend, steps_checked=args.check,
               rel_first=rel[0], rel_last=rel[-1], rel_max=max(rel), argmax_agreement=agree)
      del w, cache
      if args.torch:
        import torch
        step = torch_step_fn(c, fmt, args.max_len, args.prompt)
        for impl, fn in (("torch_eager", step),
                         ("torch_compile", None)):
          try:
            if fn is None:  # a fresh dynamo state per model: no guards left from the last one
              torch._dynamo.reset()
              fn = torch.compile(step, mode="reduce-overhead", fullgraph=True)
            ms = time_torch(fn, args.prompt, args.steps, args.repeats) / args.steps * 1e3
          except Exception as e:  # noqa: BLE001
            print(f"FAIL {name} {fmt} {impl}: {type(e).__name__}: {str(e)[-3000:]}", flush=True)
            continue
          record(**base, impl=impl, ms_per_token=ms, tokens_per_s=1e3 / ms,
                 roofline_fraction=roofline_ms / ms)
        del step
        torch.cuda.empty_cache()

  print(f"\n{'model':6} {'fmt':5} {'impl':14} {'backend':7} {'ms/token':>9} {'tok/s':>8} "
        f"{'roofline':>8}")
  for r in rows:
    if r["impl"] == "check":
      print(f"{r['model']:6} {r['format']:5} check {r['checked']} ({r['backend']}) "
            f"{r['steps_checked']} steps: rel first "
            f"{r['rel_first']:.2e} last {r['rel_last']:.2e} max {r['rel_max']:.2e}, argmax "
            f"agreement {r['argmax_agreement']:.3f}")
    else:
      print(f"{r['model']:6} {r['format']:5} {r['impl']:14} {str(r.get('backend')):7} "
            f"{r['ms_per_token']:9.3f} "
            f"{r['tokens_per_s']:8.0f} {r['roofline_fraction']:8.1%}  (roofline "
            f"{r['roofline_ms']:.3f} ms)")
  return rows


if __name__ == "__main__":
  main()
