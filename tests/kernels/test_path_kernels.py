"""PaTH Pallas kernels (pallas_kernels.path_attention): interpret mode on CPU against the fp64
oracle and the XLA blockwise form (values, decode cache, gradients), lowering for CUDA, and
bf16 checks on a GPU (kernels.md 6.6 shapes, 9.2/9.3 tolerances)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import path
from pallas_kernels.path_attention import KernelConfig, path_attention
from tests.ops.helpers import assert_close
from tests.ops.test_path import ARGS, call, cast, forward_and_grads, make_inputs

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
kernel = jit(functools.partial(path_attention, interpret=True),
             static_argnames=("block_size", "return_k_cache"))
blockwise = jit(path.path_blockwise, static_argnames=("block_size", "return_k_cache"))
interpret_kernel = functools.partial(path_attention, interpret=True)


def segments(B, T):
  """Three documents and a padded tail, with a length-1 document."""
  ids = np.zeros((B, T), np.int32)
  ids[:, :T // 3] = 1
  ids[:, T // 3:T // 3 + 1] = 2
  ids[:, T // 3 + 1:T - T // 5] = 3
  return jnp.asarray(ids)


@pytest.mark.parametrize("T, C, gate, beta_range, seg", [
    (1, 16, True, (0.0, 2.0), False),
    (17, 16, False, (1.5, 2.0), False),
    (64, 16, True, (1.5, 2.0), False),
    (100, 16, True, (0.0, 2.0), True),
    (200, 16, True, (1.5, 2.0), False),  # 13 chunks: 4 levels, a partial top block
])
def test_forward_matches_oracle_and_blockwise(T, C, gate, beta_range, seg):
  B, H, G, K, V = 2, 4, 2, 32, 16  # GQA: two query heads per key head
  x = make_inputs(T, B, T, H, G, K, V, beta_range=beta_range, gate=gate)
  segment_ids = segments(B, T) if seg else None
  with jax.enable_x64(True):
    ref = np.asarray(call(jit(path.path_quadratic), cast(x, jnp.float64),
                          segment_ids_BT=segment_ids))
  x32 = cast(x, jnp.float32)
  out, k_cache = call(kernel, x32, segment_ids_BT=segment_ids, block_size=C, return_k_cache=True)
  assert out.shape == (B, T, H, V) and out.dtype == jnp.float32
  assert_close(np.asarray(out), ref, rel=1e-5, maxabs=1e-5 * max(1, np.abs(ref).max()),
               name=f"o T={T}")
  out_b, k_cache_b = call(blockwise, x32, segment_ids_BT=segment_ids, block_size=C,
                          return_k_cache=True)
  assert_close(np.asarray(out), np.asarray(out_b), rel=1e-5, name="o vs blockwise")
  assert_close(np.asarray(k_cache), np.asarray(k_cache_b), rel=1e-5, name="k_cache")


@pytest.mark.parametrize("beta_range, tol", [((0.0, 2.0), 5e-4), ((1.5, 2.0), 1e-3)])
def test_gradients_match_oracle(beta_range, tol):
  """custom_vjp (Pallas dq/dkv kernels + autodiff of the XLA copies) vs grad of the fp64 oracle;
  72 tokens in chunks of 16 reach 3 levels; GQA, FoX gate and packed documents."""
  B, T, H, G, K, V = 1, 72, 4, 2, 16, 16
  x = make_inputs(7, B, T, H, G, K, V, beta_range=beta_range)
  do = jnp.asarray(np.random.default_rng(8).uniform(size=(B, T, H, V)))
  segment_ids = segments(B, T)
  with jax.enable_x64(True):
    _, ref = forward_and_grads(path.path_quadratic, cast(x, jnp.float64), do, segment_ids)
    ref = [np.asarray(r) for r in ref]
  _, out = forward_and_grads(interpret_kernel, cast(x, jnp.float32), do.astype(jnp.float32),
                             segment_ids, block_size=16)
  for name, o, r in zip(ARGS, out, ref):
    assert_close(np.asarray(o), r, rel=1e-4 if name[0] in "qkv" else tol, name=f"d{name}")


def test_bad_arguments_raise():
  x = cast(make_inputs(0, 1, 8, 2, 2, 16, 16), jnp.float32)
  with pytest.raises(ValueError, match="block_size"):
    call(path_attention, x, block_size=48)
  x12 = cast(make_inputs(0, 1, 8, 2, 2, 12, 16), jnp.float32)
  with pytest.raises(ValueError, match="q_BTHK.*12"):
    call(path_attention, x12, interpret=True)


def test_forward_and_backward_lower_for_cuda():
  """Cross-lowering on CPU (jax-stack.md 2.7): the three Triton kernels lower for an H200."""
  B, T, H, G, K = 1, 200, 4, 2, 128
  sd = jax.ShapeDtypeStruct
  args = (sd((B, T, H, K), jnp.bfloat16), sd((B, T, G, K), jnp.bfloat16),
          sd((B, T, G, K), jnp.bfloat16), sd((B, T, G, K), jnp.float32),
          sd((B, T, G), jnp.float32), sd((B, T, H), jnp.float32), sd((B, T), jnp.int32))

  def loss(q, k, v, w, beta, g, seg):
    return path_attention(q, k, v, w, beta, g_BTH=g, segment_ids_BT=seg,
                          config=KernelConfig(num_warps=8, num_stages=3)).astype(
        jnp.float32).sum()

  dev = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", platform="gpu", num_cores=132)
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
    lowered = jax.jit(jax.grad(loss, argnums=tuple(range(6)))).trace(*args).lower(
        lowering_platforms=("cuda",))
  text = lowered.as_text()
  for name in ("path_attention_fwd", "path_attention_bwd_dq", "path_attention_bwd_dkv"):
    assert name in text
  # the launch configuration reaches all three kernels
  assert text.count("num_warps = 8 : i32") == 3 and text.count("num_stages = 3 : i32") == 3


# ------------------------------------------------------------------------------- GPU -----------

def gpu_inputs(seed, B, T, G, H, K, gate):
  """kernels.md 6.6: bf16 q/k/v ~ N(0,1), fp32 w normalised, beta ~ U(1.5,2), g = log U(.95,1)."""
  x = make_inputs(seed, B, T, H, G, K, K, beta_range=(1.5, 2.0), gate=gate)
  return {n: None if a is None else jnp.asarray(a, jnp.bfloat16 if n[0] in "qkv" else jnp.float32)
          for n, a in x.items()}


@functools.partial(jax.jit, static_argnames="fn")
def gpu_forward_and_grads(fn, x, do_BTHV, segment_ids_BT):
  f = lambda *a: fn(*a[:5], g_BTH=a[5], segment_ids_BT=segment_ids_BT)
  out, vjp = jax.vjp(f, *(x[n] for n in ARGS))
  return out, vjp(do_BTHV.astype(out.dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("B, T, G, H, K, gate, seg", [
    (5, 512, 2, 8, 128, True, False), (3, 1024, 2, 8, 64, True, False),
    (2, 2000, 1, 4, 64, False, False), (1, 4000, 1, 2, 128, False, False),
    (1, 2048, 2, 8, 64, True, True)])
def test_gpu_bf16_matches_fp32_xla(B, T, G, H, K, gate, seg):
  x = gpu_inputs(T, B, T, G, H, K, gate)
  segment_ids = None
  if seg:  # cu_seqlens [0, 15, 333, 2048]
    segment_ids = jnp.asarray(np.repeat([[1] * 15 + [2] * 318 + [3] * 1715], B, 0), jnp.int32)
  do = jnp.asarray(np.random.default_rng(0).uniform(size=(B, T, H, K)), jnp.float32)
  with jax.default_matmul_precision("highest"):
    ref, ref_grads = gpu_forward_and_grads(path.path_blockwise, cast(x, jnp.float32), do,
                                           segment_ids)
  out, grads = gpu_forward_and_grads(path_attention, x, do, segment_ids)
  assert_close(np.asarray(out), np.asarray(ref), rel=5e-3, name="o")
  for name, o, r in zip(ARGS, grads, ref_grads):
    if r is not None:
      assert_close(np.asarray(o), np.asarray(r), rel=1e-2 if name[0] in "qkv" else 2e-2,
                   name=f"d{name}")
