"""GPU check of the PaTH Pallas kernel: bf16 correctness against the XLA blockwise form, then
timings (Mtok/s, 65,536 tokens per call, 16 heads of dim 128, forward and forward+backward)
against cuDNN causal attention; `fla` (a separate process, torch) times fla's parallel_path_attn.

  PYTHONPATH=. python3 benchmarks/check_path_kernel_gpu.py [jax|fla] [T ...]
Prints one line per figure; writes nothing else.
"""

import functools
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

H, D, TOKENS = 16, 128, 65536


def jax_part(seqlens):
  import jax
  import jax.numpy as jnp
  from lloglin.ops.path import path_blockwise
  from pallas_kernels.path_attention import kernel
  from pallas_kernels.path_attention import path_attention

  from benchmarks.timing import median_seconds, rel_error

  def inputs(key, B, T, H, G, K, dtype=jnp.bfloat16, gate=True):
    ks = jax.random.split(key, 6)
    w = jax.random.normal(ks[3], (B, T, G, K), jnp.float32)
    return dict(
        q_BTHK=jax.random.normal(ks[0], (B, T, H, K), dtype),
        k_BTGK=jax.random.normal(ks[1], (B, T, G, K), dtype),
        v_BTGV=jax.random.normal(ks[2], (B, T, G, K), dtype),
        w_BTGK=w / jnp.linalg.norm(w, axis=-1, keepdims=True),
        beta_BTG=jax.random.uniform(ks[4], (B, T, G), jnp.float32, 1.5, 2.0),
        g_BTH=jnp.log(jax.random.uniform(ks[5], (B, T, H), jnp.float32, 0.95, 1.0)) if gate
        else None)

  # Correctness (bf16 inputs) against the XLA form in fp32 at HIGHEST precision.
  B, T, Hq, G, K = 2, 1000, 8, 2, 64
  x = inputs(jax.random.PRNGKey(T), B, T, Hq, G, K)
  seg = jnp.concatenate([jnp.full((B, 300), 1), jnp.full((B, 650), 2),
                         jnp.zeros((B, T - 950), jnp.int32)], 1).astype(jnp.int32)
  f32 = {n: None if a is None else a.astype(jnp.float32) for n, a in x.items()}
  do = jax.random.uniform(jax.random.PRNGKey(1), (B, T, Hq, K), jnp.float32)

  def fwd_grads(fn, x):
    out, vjp = jax.vjp(lambda x: fn(**x, segment_ids_BT=seg), x)
    return out, vjp(do.astype(out.dtype))[0]
  with jax.default_matmul_precision("highest"):
    ref, ref_g = jax.jit(functools.partial(fwd_grads, path_blockwise))(f32)
  out, g = jax.jit(functools.partial(fwd_grads, path_attention))(x)
  print(f"CHECK B={B} T={T} H={Hq} G={G} K={K} gate seg: rel o {rel_error(out, ref):.2e} "
        + " ".join(f"d{n} {rel_error(g[n], ref_g[n]):.2e}" for n in ref_g), flush=True)

  loss = lambda x: path_attention(**x).astype(jnp.float32).sum()
  for T in seqlens:
    B = TOKENS // T
    for gate in (False, True):
      if gate and T != 8192:
        continue
      x = inputs(jax.random.PRNGKey(0), B, T, H, H, D, gate=gate)
      for nw in (4, 8):
        if nw == 8 and (gate or T != 8192):
          continue
        kernel.TUNING.update(num_warps=nw)
        for name, fn in (("fwd", jax.jit(lambda x: path_attention(**x))),
                         ("fwd+bwd", jax.jit(jax.grad(loss)))):
          try:
            s = median_seconds(lambda: fn(x))
            print(f"TIME pallas {name} T={T} B={B} gate={gate} warps={nw}: {s*1e3:.2f} ms "
                  f"{TOKENS / s / 1e6:.3f} Mtok/s", flush=True)
          except Exception as e:  # report and go on
            print(f"FAIL pallas {name} T={T} {nw}: {type(e).__name__}: {str(e)[:300]}", flush=True)
      kernel.TUNING.update(num_warps=None)
    q, k, v = (x[n] for n in ("q_BTHK", "k_BTGK", "v_BTGV"))
    att = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                       implementation="cudnn")
    att_jit = jax.jit(att)
    s = median_seconds(lambda: att_jit(q, k, v))
    print(f"TIME cudnn fwd T={T}: {s*1e3:.2f} ms {TOKENS / s / 1e6:.2f} Mtok/s", flush=True)
    fb = jax.jit(jax.grad(lambda *a: att(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
    s = median_seconds(lambda: fb(q, k, v))
    print(f"TIME cudnn fwd+bwd T={T}: {s*1e3:.2f} ms {TOKENS / s / 1e6:.2f} Mtok/s", flush=True)


def fla_part(seqlens):
  import torch
  import torch.nn.functional as F
  import triton
  from fla.ops.path_attn import parallel_path_attn
  for T in seqlens:
    B = TOKENS // T
    mk = lambda *s, dt=torch.bfloat16: torch.randn(*s, device="cuda", dtype=dt).requires_grad_()
    q, k, v = mk(B, T, H, D), mk(B, T, H, D), mk(B, T, H, D)
    w = F.normalize(torch.randn(B, T, H, D, device="cuda"), dim=-1).requires_grad_()
    beta = (1.5 + 0.5 * torch.rand(B, T, H, device="cuda")).requires_grad_()
    fn = lambda: parallel_path_attn(q, k, v, w, beta, scale=D**-0.5)[0]
    with torch.no_grad():
      ms = triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")
    print(f"TIME fla fwd T={T}: {ms:.2f} ms {TOKENS / ms / 1e3:.2f} Mtok/s", flush=True)
    do = torch.randn_like(fn())
    ms = triton.testing.do_bench(lambda: fn().backward(do), warmup=10, rep=100,
                                 return_mode="median")
    print(f"TIME fla fwd+bwd T={T}: {ms:.2f} ms {TOKENS / ms / 1e3:.2f} Mtok/s", flush=True)


if __name__ == "__main__":
  part, seqlens = sys.argv[1], [int(t) for t in sys.argv[2:]] or [8192]
  {"jax": jax_part, "fla": fla_part}[part](seqlens)
