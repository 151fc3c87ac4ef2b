"""pallas_kernels.loglinear.ssd_states (Mamba-2 SSD, materialised chunk states): interpret mode on
CPU against the fp64 recurrent oracle, forward and gradients (kernels.md 9.2); equal to
pallas_kernels.loglinear.ssd_chunked where it delegates; bf16 dg without drift along T; lowers for
CUDA from CPU; GPU checks at kernels.md 9.3's shapes and tolerances."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import ssd as ops_ssd
from pallas_kernels import loglinear as pk
from pallas_kernels.loglinear import common
from pallas_kernels.loglinear.ssd_states import ssd_chunked_states
from tests.kernels.helpers import assert_bf16_kernel_matches_fp32, assert_rows_match_alone
from tests.kernels.test_loglinear_kernels import (GRAD, GRAD_GATES, _gpu_inputs, _loss,
                                                  one_document_rows)
from tests.ops import linear_mixers as lm
from tests.ops.helpers import assert_close

FAM = lm.FAMILIES['ssd']
GRADS = ('dq', 'dk', 'dv', 'dg')


def args_of(data, dtype):
  return tuple(jnp.asarray(data[n], dtype) for n in ('q', 'k', 'v', 'g'))


def out_and_grads(fn, cot, args):
  """fn(*args) and the gradients of sum(fn(*args) * cot) in one jitted call."""
  def run(*a):
    o, vjp = jax.vjp(fn, *a)
    return o, vjp(jnp.asarray(cot, o.dtype))
  return jax.jit(run)(*args)


def tolerance(name):
  return GRAD if name in ('dq', 'dk', 'dv') else GRAD_GATES


@pytest.mark.parametrize('T,G,K,tau', [(16, 1, 16, None), (45, 2, 32, None), (64, 1, 32, 0.1),
                                       (100, 2, 16, None)])
def test_forward_and_gradients_equal_fp64_oracle(T, G, K, tau):
  """H = 4 heads over G q/k groups, chunk 16 (a partial last chunk at T = 45 and 100), scale != 1;
  tau = 0.1: in-chunk exponents of hundreds (masks act before exp)."""
  B, H, V, C, scale = 2, 4, 32, 16, 0.7
  data = lm.make_data(T, B, T, fam=FAM, G=G, H=H, K=K, V=V, tau=tau)
  cot = np.random.default_rng(T).standard_normal((B, T, H, V))
  kfn = functools.partial(ssd_chunked_states, chunk_size=C, scale=scale, interpret=True)
  oracle = functools.partial(ops_ssd.ssd_recurrent, scale=scale)
  with jax.enable_x64(True):
    ref = jax.jit(oracle)(*args_of(data, jnp.float64))
    want = jax.jit(jax.grad(_loss(oracle, jnp.asarray(cot)), argnums=(0, 1, 2, 3)))(
        *args_of(data, jnp.float64))
    out, got = out_and_grads(kfn, cot, args_of(data, jnp.float32))
  assert out.dtype == jnp.float32
  assert_close(out, ref, **lm.fwd_tol(ref), name=f'forward T={T} G={G}')
  for name, x, y in zip(GRADS, got, want):
    assert x.dtype == jnp.float32
    assert_close(x, y, **tolerance(name), name=f'{name} T={T} G={G}')


@pytest.mark.parametrize('layout', ['one_document', 'packed'])
def test_segment_ids_equal_level_scan_kernels(layout):
  """NaN-poisoned padding. One document per row (run by these kernels): equal, within kernels.md
  9.2's tolerances, to pallas_kernels.loglinear.ssd_chunked, padding outputs and gradients 0.
  Packed documents (delegated): identical."""
  seg = one_document_rows() if layout == 'one_document' else lm.packed_segment_ids()
  B, T = seg.shape
  data = lm.poison_padding(lm.make_data(2, B, T, fam=FAM, G=1, H=2, K=16, V=16), seg)
  seg = jnp.asarray(seg)
  cot = np.random.default_rng(1).standard_normal((B, T, 2, 16))
  kw = dict(segment_ids_BT=seg, chunk_size=16, scale=0.5, interpret=True)
  out, got = out_and_grads(functools.partial(ssd_chunked_states, **kw), cot,
                           args_of(data, jnp.float32))
  ref, want = out_and_grads(functools.partial(pk.ssd_chunked, **kw), cot,
                            args_of(data, jnp.float32))
  pad = np.asarray(seg) == 0
  assert np.all(np.asarray(out)[pad] == 0)
  for name, x, y in zip(('o',) + GRADS, (out,) + tuple(got), (ref,) + tuple(want)):
    if layout == 'packed':
      np.testing.assert_array_equal(x, y, err_msg=name)
    else:
      assert_close(x, y, **(lm.fwd_tol(ref) if name == 'o' else tolerance(name)), name=name)
      assert np.all(np.asarray(x)[pad] == 0), name


def test_states_and_small_chunks_delegate():
  data = lm.make_data(8, 2, 40, fam=FAM, G=1, H=2)
  args = args_of(data, jnp.float32)
  state = jnp.asarray(np.random.default_rng(3).standard_normal((2, 2, 16, 16)), jnp.float32)
  for kw in (dict(return_final_state=True), dict(initial_state_BHKV=state), dict(chunk_size=8)):
    kw = dict(dict(chunk_size=16, interpret=True), **kw)
    got, want = ssd_chunked_states(*args, **kw), pk.ssd_chunked(*args, **kw)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(x, y, err_msg=str(kw))
  with pytest.raises(ValueError, match='chunk_size'):
    ssd_chunked_states(*args, chunk_size=24)


def test_batch_split_below_2_31_elements(monkeypatch):
  """Batches are cut so that no kernel array (the chunk states included) reaches
  common.MAX_ELEMENTS: with the limit lowered to one row's arrays, the batch of 3 runs one row per
  launch and equals each row run alone, forward and gradients."""
  B, T, H, K, V = 3, 48, 2, 16, 16
  monkeypatch.setattr(common, 'MAX_ELEMENTS', T * H * max(K, V))
  data = lm.make_data(9, B, T, fam=FAM, G=1, H=H, K=K, V=V)
  cot = np.random.default_rng(9).standard_normal((B, T, H, V))
  fn = functools.partial(ssd_chunked_states, chunk_size=16, interpret=True)
  args = args_of(data, jnp.float32)
  out, grads = out_and_grads(fn, cot, args)
  for b in range(B):
    out_b, grads_b = out_and_grads(fn, cot[b:b + 1], [x[b:b + 1] for x in args])
    for name, x, y in zip(('o',) + GRADS, (out,) + grads, (out_b,) + grads_b):
      assert_close(x[b:b + 1], y, rel=1e-6, name=f'{name} row {b}')


def test_bf16_dg_does_not_drift_over_a_long_sequence():
  """dg from chunk-local reverse cumsums plus one fp32 state product per chunk (module docstring)
  does not add bf16 rounding up along T: at T = 4096 it is ~10x inside kernels.md 9.3's 2e-2
  (level_scan's global cumsum reached 2.4e-2 at T = 8192 before its hi + lo states)."""
  B, T, G, H, D = 1, 4096, 1, 2, 64
  args, cot = _gpu_inputs(B, T, G, H, D, D)
  args = args[:4]
  kw = dict(scale=D ** -0.5)
  got = jax.jit(jax.grad(_loss(functools.partial(ssd_chunked_states, interpret=True, **kw), cot),
                         argnums=(0, 1, 2, 3)))(*args)
  with jax.default_matmul_precision('highest'):
    want = jax.jit(jax.grad(_loss(functools.partial(ops_ssd.ssd_chunked, **kw), cot),
                            argnums=(0, 1, 2, 3)))(*[a.astype(jnp.float32) for a in args])
  for name, x, y in zip(GRADS, got, want):
    assert_close(x.astype(jnp.float32), y, rel=5e-3 if name == 'dg' else 1e-2, name=name)


def test_every_kernel_lowers_for_cuda():
  """The two state kernels, the output kernel and the gradient kernel lower through Pallas-Triton
  for an H200 (from CPU), at head dims 128 / 64, grouped heads and 5 chunks (a chunk count that
  is not a power of two; the last one partial)."""
  dev = jax.sharding.AbstractDevice(device_kind='NVIDIA H200', platform='gpu', num_cores=132)
  B, T, G, H, K, V = 2, 300, 2, 4, 128, 64
  S = jax.ShapeDtypeStruct
  shapes = [S((B, T, G, K), jnp.bfloat16), S((B, T, G, K), jnp.bfloat16),
            S((B, T, H, V), jnp.bfloat16), S((B, T, H), jnp.float32)]
  names = lambda text: sorted(set(re.findall(r'name = "(ssd_states_\w+)"', text)))  # noqa: E731
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
    fwd = jax.jit(ssd_chunked_states).trace(*shapes).lower(lowering_platforms=('cuda',))
    loss = lambda *a: jnp.sum(ssd_chunked_states(*a).astype(jnp.float32))  # noqa: E731
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(*shapes).lower(
        lowering_platforms=('cuda',))
  assert names(fwd.as_text()) == ['ssd_states_fwd', 'ssd_states_output']
  assert names(bwd.as_text()) == ['ssd_states_bwd', 'ssd_states_fwd', 'ssd_states_grads',
                                 'ssd_states_output']


# ------------------------------------------------------------------------------------------------
# GPU (kernels.md 9.3): bf16 inputs vs the fp32 XLA chunked form (precision HIGHEST)


@pytest.mark.gpu
@pytest.mark.parametrize('B,T,G,H,D', [(2, 1024, 1, 8, 128), (1, 8192, 1, 4, 64)])
def test_gpu_bf16_forward_and_gradients(B, T, G, H, D):
  args, cot = _gpu_inputs(B, T, G, H, D, D)
  kw = dict(scale=D ** -0.5)
  assert_bf16_kernel_matches_fp32(functools.partial(ssd_chunked_states, **kw),
                                  functools.partial(ops_ssd.ssd_chunked, **kw), args[:4], cot,
                                  GRADS)


@pytest.mark.gpu
def test_gpu_more_than_2_31_elements():
  """B*T*H*V = 2^31 + 2^27 elements per sequence tensor and 2^32 + 2^28 in the chunk states: no
  int32 offset overflow (the batch runs in slices). Forward only; rows at the start, middle and
  end equal the same row run alone."""
  B, T, G, H, D = 17, 65536, 1, 16, 128
  args, _ = _gpu_inputs(B, T, G, H, D, D)
  assert args[2].size > 2**31
  assert_rows_match_alone(ssd_chunked_states, args[:4], rows=(0, 8, B - 1))
