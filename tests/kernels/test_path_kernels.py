"""PaTH Pallas kernels (pallas_kernels.path), the default and the linear-memory
variant: interpret mode on CPU against the fp64 oracle and the XLA blockwise form (values, decode
cache, gradients), lowering for CUDA, compiled memory against T, and bf16 checks on a GPU
(shapes and tolerances: docs/correctness.md#cpu-tests, docs/correctness.md#gpu-tests)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import path
from pallas_kernels.path import KernelConfig, path_attention, path_attention_linear_memory
from tests.ops.helpers import assert_close
from tests.ops.test_path import ARGS, call, cast, forward_and_grads, make_inputs

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
KERNELS = [path_attention, path_attention_linear_memory]
jitted = {fn: jit(functools.partial(fn, interpret=True),
                  static_argnames=("block_size", "return_k_cache")) for fn in KERNELS}
blockwise = jit(path.path_blockwise, static_argnames=("block_size", "return_k_cache"))
by_kernel = pytest.mark.parametrize("fn", KERNELS, ids=lambda fn: fn.__name__)


def segments(B, T):
  """Three documents and a padded tail, with a length-1 document."""
  ids = np.zeros((B, T), np.int32)
  ids[:, :T // 3] = 1
  ids[:, T // 3:T // 3 + 1] = 2
  ids[:, T // 3 + 1:T - T // 5] = 3
  return jnp.asarray(ids)


@by_kernel
@pytest.mark.parametrize("T, C, gate, beta_range, seg", [
    (1, 16, True, (0.0, 2.0), False),
    (17, 16, False, (1.5, 2.0), False),
    (64, 16, True, (1.5, 2.0), False),
    (100, 16, True, (0.0, 2.0), True),
    (200, 16, True, (1.5, 2.0), False),  # 13 chunks: 4 levels, a partial top block
])
def test_forward_matches_oracle_and_blockwise(fn, T, C, gate, beta_range, seg):
  B, H, G, K, V = 2, 4, 2, 32, 16  # GQA: two query heads per key head
  x = make_inputs(T, B, T, H, G, K, V, beta_range=beta_range, gate=gate)
  segment_ids = segments(B, T) if seg else None
  with jax.enable_x64(True):
    ref = np.asarray(call(jit(path.path_quadratic), cast(x, jnp.float64),
                          segment_ids_BT=segment_ids))
  x32 = cast(x, jnp.float32)
  out, k_cache = call(jitted[fn], x32, segment_ids_BT=segment_ids, block_size=C,
                      return_k_cache=True)
  assert out.shape == (B, T, H, V) and out.dtype == jnp.float32
  assert_close(np.asarray(out), ref, rel=1e-5, maxabs=1e-5 * max(1, np.abs(ref).max()),
               name=f"o T={T}")
  out_b, k_cache_b = call(blockwise, x32, segment_ids_BT=segment_ids, block_size=C,
                          return_k_cache=True)
  assert_close(np.asarray(out), np.asarray(out_b), rel=1e-5, name="o vs blockwise")
  assert_close(np.asarray(k_cache), np.asarray(k_cache_b), rel=1e-5, name="k_cache")


@by_kernel
@pytest.mark.parametrize("beta_range, tol", [((0.0, 2.0), 5e-4), ((1.5, 2.0), 1e-3)])
def test_gradients_match_oracle(fn, beta_range, tol):
  """custom_vjp (Pallas dq/dkv kernels + autodiff of the XLA copies) vs grad of the fp64 oracle;
  72 tokens in chunks of 16 reach 3 levels; GQA, FoX gate and packed documents."""
  B, T, H, G, K, V = 1, 72, 4, 2, 16, 16
  x = make_inputs(7, B, T, H, G, K, V, beta_range=beta_range)
  do = jnp.asarray(np.random.default_rng(8).uniform(size=(B, T, H, V)))
  segment_ids = segments(B, T)
  with jax.enable_x64(True):
    _, ref = forward_and_grads(path.path_quadratic, cast(x, jnp.float64), do, segment_ids)
    ref = [np.asarray(r) for r in ref]
  _, out = forward_and_grads(functools.partial(fn, interpret=True), cast(x, jnp.float32),
                             do.astype(jnp.float32), segment_ids, block_size=16)
  for name, o, r in zip(ARGS, out, ref):
    assert_close(np.asarray(o), r, rel=1e-4 if name[0] in "qkv" else tol, name=f"d{name}")


@by_kernel
def test_bad_arguments_raise(fn):
  x = cast(make_inputs(0, 1, 8, 2, 2, 16, 16), jnp.float32)
  with pytest.raises(ValueError, match="block_size"):
    call(fn, x, block_size=48)
  x12 = cast(make_inputs(0, 1, 8, 2, 2, 12, 16), jnp.float32)
  with pytest.raises(ValueError, match="q_BTHK.*12"):
    call(fn, x12, interpret=True)


@pytest.mark.parametrize("fn, names, calls", [
    # the default: the three attention kernels, each called once
    (path_attention, (), 3),
    # one level at a time: each attention kernel twice (level 0 with the diagonal tiles, the
    # levels above inside a loop); the copy kernels launch with their own parameters
    (path_attention_linear_memory, ("path_cross", "path_tree_grad"), 6)],
    ids=lambda a: getattr(a, "__name__", None))
def test_forward_and_backward_lower_for_cuda(fn, names, calls):
  """Cross-lowering on CPU (docs/correctness.md#kernels-on-the-cpu-without-a-gpu): every Triton
  kernel lowers for an H200 and the launch configuration reaches the attention kernels."""
  B, T, H, G, K = 1, 200, 4, 2, 128
  sd = jax.ShapeDtypeStruct
  args = (sd((B, T, H, K), jnp.bfloat16), sd((B, T, G, K), jnp.bfloat16),
          sd((B, T, G, K), jnp.bfloat16), sd((B, T, G, K), jnp.float32),
          sd((B, T, G), jnp.float32), sd((B, T, H), jnp.float32), sd((B, T), jnp.int32))

  def loss(q, k, v, w, beta, g, seg):
    return fn(q, k, v, w, beta, g_BTH=g, segment_ids_BT=seg,
              config=KernelConfig(num_warps=8, num_stages=3)).astype(jnp.float32).sum()

  dev = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", platform="gpu", num_cores=132)
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
    lowered = jax.jit(jax.grad(loss, argnums=tuple(range(6)))).trace(*args).lower(
        lowering_platforms=("cuda",))
  text = lowered.as_text()
  for name in ("path_attention_fwd", "path_attention_bwd_dq", "path_attention_bwd_dkv") + names:
    assert name in text
  assert text.count("num_stages = 3 : i32") == calls
  if fn is path_attention:
    assert text.count("num_warps = 8 : i32") == calls


@pytest.mark.parametrize("fn, lo, hi", [(path_attention_linear_memory, 3.5, 4.2),
                                         (path_attention, 4.6, 6.0)],
                         ids=lambda a: getattr(a, "__name__", None))
def test_memory_grows_linearly_in_length(fn, lo, hi):
  """Compiled fwd+bwd temporaries (XLA's memory analysis, interpret mode) at 4x the tokens
  (1024 -> 4096): within 4.2x for the linear-memory variant, one level's query / key copies
  alive at a time (4.03x); more for the default kernels, every level's at once (T log T: 5.0x)."""
  def temp_bytes(T):
    x = [jax.ShapeDtypeStruct((1, T, 2, 32), jnp.float32)] * 4 + [
        jax.ShapeDtypeStruct((1, T, 2), jnp.float32)]
    loss = lambda *a: fn(*a, block_size=16, interpret=True).sum()  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=tuple(range(5)))).lower(*x).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(1024), temp_bytes(4096)
  assert lo < large / small < hi, (small, large)


# ------------------------------------------------------------------------------- GPU -----------

def gpu_inputs(seed, B, T, G, H, K, gate):
  """docs/correctness.md#gpu-tests: bf16 q/k/v ~ N(0,1), fp32 w normalised, beta ~ U(1.5,2),
  g = log U(.95,1)."""
  x = make_inputs(seed, B, T, H, G, K, K, beta_range=(1.5, 2.0), gate=gate)
  return {n: None if a is None else jnp.asarray(a, jnp.bfloat16 if n[0] in "qkv" else jnp.float32)
          for n, a in x.items()}


@functools.partial(jax.jit, static_argnames="fn")
def gpu_forward_and_grads(fn, x, do_BTHV, segment_ids_BT):
  f = lambda *a: fn(*a[:5], g_BTH=a[5], segment_ids_BT=segment_ids_BT)
  out, vjp = jax.vjp(f, *(x[n] for n in ARGS))
  return out, vjp(do_BTHV.astype(out.dtype))


@pytest.mark.gpu
@by_kernel
@pytest.mark.parametrize("B, T, G, H, K, gate, seg", [
    (5, 512, 2, 8, 128, True, False), (3, 1024, 2, 8, 64, True, False),
    (2, 2000, 1, 4, 64, False, False), (1, 4000, 1, 2, 128, False, False),
    (1, 2048, 2, 8, 64, True, True)])
def test_gpu_bf16_matches_fp32_xla(fn, B, T, G, H, K, gate, seg):
  check_gpu_bf16(fn, B, T, G, H, K, gate, seg)


@pytest.mark.gpu
@pytest.mark.parametrize("B, T, G, H, K, gate, seg", [
    (5, 512, 2, 8, 128, True, False), (1, 2048, 2, 8, 64, True, True)])
def test_gpu_bf16_mosaic_matches_fp32_xla(B, T, G, H, K, gate, seg):
  """The same check with the three kernels on Mosaic GPU (KernelConfig(backend='mosaic'))."""
  check_gpu_bf16(functools.partial(path_attention, config=KernelConfig(backend="mosaic")), B, T,
                 G, H, K, gate, seg)


def check_gpu_bf16(fn, B, T, G, H, K, gate, seg):
  x = gpu_inputs(T, B, T, G, H, K, gate)
  segment_ids = None
  if seg:  # cu_seqlens [0, 15, 333, 2048]
    segment_ids = jnp.asarray(np.repeat([[1] * 15 + [2] * 318 + [3] * 1715], B, 0), jnp.int32)
  do = jnp.asarray(np.random.default_rng(0).uniform(size=(B, T, H, K)), jnp.float32)
  with jax.default_matmul_precision("highest"):
    ref, ref_grads = gpu_forward_and_grads(path.path_blockwise, cast(x, jnp.float32), do,
                                           segment_ids)
  out, grads = gpu_forward_and_grads(fn, x, do, segment_ids)
  assert_close(np.asarray(out), np.asarray(ref), rel=5e-3, name="o")
  for name, o, r in zip(ARGS, grads, ref_grads):
    if r is not None:
      assert_close(np.asarray(o), np.asarray(r), rel=1e-2 if name[0] in "qkv" else 2e-2,
                   name=f"d{name}")


# ------------------------------------------------------------------ Mosaic GPU (backend='mosaic')

MOSAIC = KernelConfig(backend="mosaic")


def test_mosaic_kernels_match_oracle_and_triton():
  """path_attention with KernelConfig(backend='mosaic') (interpret mode, bf16 q/k/v: the forward,
  dq and dkv kernels on Mosaic GPU): the output and the gradients == the Triton kernels'
  (interpret mode, the same inputs) and the fp64 quadratic oracle's within the GPU tests'
  tolerances (docs/correctness.md#gpu-tests). 330 tokens in chunks of 64 (6 chunks: 3 levels,
  the dkv kernel's last query block past the end, a partial last chunk), GQA, the FoX gate,
  packed documents, K = V = 64."""
  B, T, H, G, K = 1, 330, 4, 2, 64
  x = gpu_inputs(11, B, T, G, H, K, True)
  segment_ids = segments(B, T)
  do = jnp.asarray(np.random.default_rng(1).uniform(size=(B, T, H, K)), jnp.float32)
  fn = lambda config: functools.partial(path_attention, block_size=64, interpret=True,  # noqa
                                        config=config)
  out, grads = gpu_forward_and_grads(fn(MOSAIC), x, do, segment_ids)
  out_triton, grads_triton = gpu_forward_and_grads(fn(KernelConfig()), x, do, segment_ids)
  with jax.enable_x64(True):
    ref, ref_grads = forward_and_grads(path.path_quadratic, cast(x, jnp.float64), do,
                                       segment_ids)
  for name, o, t, r in zip(("o",) + tuple(f"d{n}" for n in ARGS), (out,) + tuple(grads),
                           (out_triton,) + tuple(grads_triton), (ref,) + tuple(ref_grads),
                           strict=True):
    o, t = np.asarray(o, np.float32), np.asarray(t, np.float32)
    assert_close(o, t, rel=1e-3, name=f"{name} vs triton")
    assert_close(o, np.asarray(r), rel=5e-3 if name == "o" else 1e-2 if name[1] in "qkv" else 2e-2,
                 name=name)


def test_mosaic_kernels_lower_for_cuda_at_8k():
  """At T = 8192, 16 heads x 128, bf16, with the gate and segment ids, PaTH's forward and
  backward under backend='mosaic' lower for CUDA from CPU (Mosaic GPU's layout inference and
  checks run here) with no kernel left on the Triton lowering."""
  B, T, H, K = 1, 8192, 16, 128
  S = jax.ShapeDtypeStruct
  shapes = [S((B, T, H, K), jnp.bfloat16)] * 4 + [S((B, T, H), jnp.float32)] * 2 + [
      S((B, T), jnp.int32)]
  dev = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", platform="gpu",
                                    num_cores=132)
  loss = lambda q, k, v, w, b, g, s: jnp.sum(path_attention(  # noqa: E731
      q, k, v, w, b, g_BTH=g, segment_ids_BT=s, config=MOSAIC).astype(jnp.float32))
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
    text = jax.jit(jax.grad(loss, argnums=tuple(range(6)))).trace(*shapes).lower(
        lowering_platforms=("cuda",)).as_text()
  for name in ("fwd", "bwd_dq", "bwd_dkv"):
    assert f"path_attention_{name}_mgpu" in text, name
  assert "__gpu$xla.gpu.triton" not in text


def test_mosaic_rejects_what_it_cannot_serve():
  x = gpu_inputs(3, 1, 64, 1, 2, 32, False)
  with pytest.raises(ValueError, match="backend='mosaic'.*K=32"):
    call(functools.partial(path_attention, interpret=True, config=MOSAIC), x)
  with pytest.raises(ValueError, match="backend='mosaic'.*block_size=32"):
    call(functools.partial(path_attention, interpret=True, config=MOSAIC, block_size=32),
         gpu_inputs(3, 1, 64, 1, 2, 64, False))
  mixed = dict(gpu_inputs(3, 1, 64, 1, 2, 64, False))
  mixed["v_BTGV"] = mixed["v_BTGV"].astype(jnp.float32)
  with pytest.raises(ValueError, match=r"dtype=\['bfloat16', 'float32'\]"):
    call(functools.partial(path_attention, interpret=True, config=MOSAIC), mixed)
  with pytest.raises(ValueError, match="config.backend='auto'; expected 'triton' or 'mosaic'"):
    call(functools.partial(path_attention, interpret=True, config=KernelConfig(backend="auto")),
         x)
  with pytest.raises(ValueError, match="linear_memory: config.backend='mosaic'"):
    call(functools.partial(path_attention_linear_memory, interpret=True, config=MOSAIC), x)
