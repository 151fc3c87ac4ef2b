"""pallas_kernels.mamba2 (Mamba-2 SSD and log-linear Mamba-2): the Pallas kernels (interpret
mode on CPU) equal the lloglin.ops chunked forms and the fp64 oracles, forward and backward
(docs/correctness.md#cpu-tests); every kernel lowers for CUDA from CPU
(docs/correctness.md#kernels-on-the-cpu-without-a-gpu); GPU checks at the shapes and tolerances of
docs/correctness.md#gpu-tests."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import hierarchy as hierarchy_ops
from lloglin.ops import loglinear as ops_loglinear
from lloglin.ops import mamba2 as ops_mamba2
from pallas_kernels import mamba2 as pk
from pallas_kernels.mamba2 import kernel as triton_kernel
from pallas_kernels.mamba2 import kernel_mgpu
from tests.kernels.helpers import (assert_bf16_kernel_matches_fp32, continuation_segments,
                                   one_document_rows)
from tests.ops import linear_mixers as lm
from tests.ops.helpers import assert_close

FAM = lm.FAMILIES['loglinear_mamba2']
GRAD = dict(rel=1e-4)            # dq, dk, dv (docs/correctness.md#cpu-tests)
GRAD_GATES = dict(rel=5e-4)      # dg, dlam


@functools.cache
def kernel_fn(hierarchy, chunk_size, scale=1.0):
  fn = pk.loglinear_ssd_chunked if hierarchy else pk.ssd_chunked
  return jax.jit(functools.partial(fn, chunk_size=chunk_size, scale=scale, interpret=True))


def args_of(data, dtype, hierarchy, T=None):
  names = ('q', 'k', 'v', 'g') + (('lam',) if hierarchy else ())
  return tuple(jnp.asarray(data[n][:, :T], dtype) for n in names)


@pytest.mark.parametrize('T,C', [(1, 16), (17, 16), (64, 32), (100, 32), (128, 16)])
def test_forward_equals_oracle_and_xla_form(T, C):
  data, rec, _ = lm.reference(FAM.name)                     # fp64 recurrent oracle, T = 300
  with jax.enable_x64(True):
    out = kernel_fn(True, C)(*args_of(data, jnp.float32, True, T))
    xla = lm.jitted(ops_loglinear.loglinear_ssd_chunked, chunk_size=C)(
        *args_of(data, jnp.float32, True, T))
  assert out.dtype == jnp.float32
  assert_close(out, rec[:, :T], **lm.fwd_tol(rec[:, :T]), name=f'kernel vs oracle T={T} C={C}')
  assert_close(out, xla, **lm.fwd_tol(rec[:, :T]), name=f'kernel vs XLA form T={T} C={C}')


@pytest.mark.parametrize('T,C', [(17, 16), (100, 32)])
def test_ssd_forward_equals_oracle(T, C):
  data = lm.make_data(3, 2, T, fam=lm.FAMILIES['mamba2'], K=32, V=32)
  with jax.enable_x64(True):
    ref = lm.jitted(ops_mamba2.ssd_recurrent)(*args_of(data, jnp.float64, False))
    out = kernel_fn(False, C)(*args_of(data, jnp.float32, False))
  assert_close(out, ref, **lm.fwd_tol(ref), name=f'ssd kernel T={T} C={C}')


def test_lam_ones_reduces_to_ssd_and_gqa_head_dims():
  """lam == 1: log-linear kernel == SSD kernel; GQA (1 q/k group, 2 heads), dk=32 / dv=64, and
  g = logsigmoid / 0.1 (in-chunk exponents reach hundreds: masks must act before exp)."""
  data = lm.make_data(4, 2, 100, fam=FAM, G=1, H=2, K=32, V=64, tau=0.1, lam='ones')
  with jax.enable_x64(True):
    ref = lm.jitted(ops_mamba2.ssd_recurrent)(*args_of(data, jnp.float64, False))
    out_ll = kernel_fn(True, 32)(*args_of(data, jnp.float32, True))
    out_ssd = kernel_fn(False, 32)(*args_of(data, jnp.float32, False))
  assert_close(out_ll, ref, **lm.fwd_tol(ref), name='loglinear, lam = 1')
  assert_close(out_ssd, ref, **lm.fwd_tol(ref), name='ssd')


def test_each_level_isolated():
  """lam one-hot on one level at a time: kernel == fp64 quadratic oracle (every level mask)."""
  data = dict(lm.make_data(5, 1, 128, fam=FAM, H=1, L=8))
  for level in range(8):
    data['lam'] = np.zeros_like(data['lam'])
    data['lam'][..., level] = 1.0
    with jax.enable_x64(True):
      ref = np.asarray(lm.jitted(ops_loglinear.loglinear_ssd_quadratic)(
          *args_of(data, jnp.float64, True)))
      out = kernel_fn(True, 16)(*args_of(data, jnp.float32, True))
    assert np.abs(ref).max() > 1e-3, level
    assert_close(out, ref, **lm.fwd_tol(ref), name=f'level {level}')


def _loss(fn, cot):
  return lambda *a: jnp.sum(fn(*a).astype(cot.dtype) * cot)


@pytest.mark.parametrize('hierarchy', [True, False], ids=['loglinear_mamba2', 'mamba2'])
def test_gradients_equal_fp64_oracle(hierarchy):
  """custom_vjp (Pallas backward kernels) == jax.grad of the fp64 recurrent oracle, with GQA,
  a partial last chunk and scale != 1."""
  T, C, scale = 45, 16, 0.7
  data = lm.make_data(6, 2, T, fam=FAM, G=1, H=2, K=16, V=32, L=7, lam='softplus')
  cot = np.random.default_rng(7).standard_normal((2, T, 2, 32))
  n = 5 if hierarchy else 4
  if hierarchy:
    oracle = functools.partial(ops_loglinear.loglinear_ssd_recurrent, scale=scale)
  else:
    oracle = functools.partial(ops_mamba2.ssd_recurrent, scale=scale)
  with jax.enable_x64(True):
    ref = jax.jit(jax.grad(_loss(oracle, jnp.asarray(cot)), argnums=tuple(range(n))))(
        *args_of(data, jnp.float64, hierarchy))
    got = jax.jit(jax.grad(_loss(kernel_fn(hierarchy, C, scale), jnp.asarray(cot, jnp.float32)),
                           argnums=tuple(range(n))))(*args_of(data, jnp.float32, hierarchy))
  for name, x, y in zip(('dq', 'dk', 'dv', 'dg', 'dlam'), got, ref):
    assert x.dtype == jnp.float32
    assert_close(x, y, **(GRAD if name in ('dq', 'dk', 'dv') else GRAD_GATES), name=name)


def test_bf16_dg_does_not_drift_over_a_long_sequence():
  """dg is a reverse cumsum over T of q.dq - k.dk, so bf16 rounding of the states in the dq / dk
  passes adds up along the sequence (2.4e-2 at T = 8192 with 4 x 64 heads, over the GPU tests'
  2e-2, before those passes kept their states as hi + lo bf16;
  docs/correctness.md#long-sequence-gradient-check). Interpret mode, the GPU test's
  inputs and tolerance on the gradients of g and lambda."""
  B, T, G, H, D = 1, 8192, 1, 2, 64
  args, cot = _gpu_inputs(B, T, G, H, D, D)
  scale = D ** -0.5
  kfn = functools.partial(pk.loglinear_ssd_chunked, scale=scale, interpret=True)
  rfn = functools.partial(ops_loglinear.loglinear_ssd_chunked, scale=scale)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * cot)  # noqa: E731
  got = jax.jit(jax.grad(loss(kfn), argnums=(3, 4)))(*args)
  with jax.default_matmul_precision('highest'):
    want = jax.jit(jax.grad(loss(rfn), argnums=(3, 4)))(*[a.astype(jnp.float32) for a in args])
  for name, x, y in zip(('dg', 'dlam'), got, want):
    assert_close(x, y, rel=2e-2, name=name)

@pytest.mark.parametrize('layout', ['packed', 'one_document'])
@pytest.mark.parametrize('hierarchy', [True, False], ids=['loglinear_mamba2', 'mamba2'])
def test_packed_documents(hierarchy, layout):
  """Packed rows (documents of 1 and 15 tokens, padding between and after) and rows of one
  document then padding (run by the aligned kernels), NaN-poisoned: kernel == fp64 recurrent
  oracle, and its gradients == jax.grad of the XLA form (padding grads 0)."""
  seg = lm.packed_segment_ids() if layout == 'packed' else one_document_rows()
  B, T = seg.shape
  data = lm.poison_padding(lm.make_data(2, B, T, fam=FAM, L=8), seg)
  seg = jnp.asarray(seg)
  cot = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, 2, 16)), jnp.float32)
  n = 5 if hierarchy else 4
  kfn = functools.partial(pk.loglinear_ssd_chunked if hierarchy else pk.ssd_chunked,
                          segment_ids_BT=seg, chunk_size=16, interpret=True)
  rfn = functools.partial(ops_loglinear.loglinear_ssd_chunked if hierarchy
                          else ops_mamba2.ssd_chunked, segment_ids_BT=seg, chunk_size=16)
  oracle = functools.partial(ops_loglinear.loglinear_ssd_recurrent if hierarchy
                             else ops_mamba2.ssd_recurrent, segment_ids_BT=seg)
  with jax.enable_x64(True):
    ref = jax.jit(oracle)(*args_of(data, jnp.float64, hierarchy))
    out, got = jax.jit(jax.value_and_grad(_loss(kfn, cot), argnums=tuple(range(n))))(
        *args_of(data, jnp.float32, hierarchy))
    out = jax.jit(kfn)(*args_of(data, jnp.float32, hierarchy))
    _, want = jax.jit(jax.value_and_grad(_loss(rfn, cot), argnums=tuple(range(n))))(
        *args_of(data, jnp.float32, hierarchy))
  assert_close(out, ref, **lm.fwd_tol(ref), name='output')
  assert np.all(np.asarray(out)[np.asarray(seg) == 0] == 0)
  for name, x, y in zip(('dq', 'dk', 'dv', 'dg', 'dlam'), got, want):
    assert_close(x, y, **GRAD_GATES, name=name)


@pytest.mark.parametrize('layout', ['none', 'packed'])
@pytest.mark.parametrize('hierarchy', [True, False], ids=['loglinear_mamba2', 'mamba2'])
def test_states_equal_fp64_oracle(hierarchy, layout):
  """A chunked continuation through the kernels plus XLA's state terms: initial state (log-linear:
  a FenwickState after 37 tokens, so positions continue from there and the packed kernels run
  with every level) and final state == the fp64 recurrent oracle, values and gradients (into the
  initial state, out of the final one), with GQA, a partial chunk, scale != 1 and, packed, a
  second document (starting empty) and trailing padding."""
  B, T0, T, C, scale = 2, 37, 45, 16, 0.7
  data = lm.make_data(9, B, T0 + T, fam=FAM, G=1, H=2, K=16, V=32, L=8, lam='softplus')
  seg = continuation_segments(layout, B, T)
  n = 5 if hierarchy else 4
  oracle = ops_loglinear.loglinear_ssd_recurrent if hierarchy else ops_mamba2.ssd_recurrent
  kernel = pk.loglinear_ssd_chunked if hierarchy else pk.ssd_chunked
  state_kw = 'initial_state' if hierarchy else 'initial_state_BHKV'
  with jax.enable_x64(True):
    prefix = tuple(x[:, :T0] for x in args_of(data, jnp.float64, hierarchy))
    _, state0 = jax.jit(functools.partial(oracle, return_final_state=True))(*prefix[:n])
  S0 = np.asarray(state0.S_BHLKV if hierarchy else state0)
  rng = np.random.default_rng(3)
  cot_o = rng.standard_normal((B, T, 2, 32))
  cot_s = rng.standard_normal(S0.shape)

  def run(fn, dtype, **kw):
    def loss(*a):
      init = hierarchy_ops.FenwickState(a[n], state0.t_B) if hierarchy else a[n]
      o, s = fn(*a[:n], segment_ids_BT=seg, scale=scale, return_final_state=True,
                **{state_kw: init}, **kw)
      s = s.S_BHLKV if hierarchy else s
      total = jnp.sum(o * jnp.asarray(cot_o, dtype)) + jnp.sum(s * jnp.asarray(cot_s, dtype))
      return total, (o, s)
    args = tuple(x[:, T0:] for x in args_of(data, dtype, hierarchy)) + (jnp.asarray(S0, dtype),)
    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(n + 1)), has_aux=True))(*args)

  with jax.enable_x64(True):
    (_, (o_ref, s_ref)), g_ref = run(oracle, jnp.float64)
    (_, (o, s)), g = run(kernel, jnp.float32, chunk_size=C, interpret=True)
  assert_close(o, o_ref, **lm.fwd_tol(o_ref), name='output')
  assert_close(s, s_ref, **lm.fwd_tol(s_ref), name='final state')
  if hierarchy:   # only the buckets a state after T0 tokens holds (level 0, and l where bit l - 1
    # of T0 - 1 is set) are inputs of the function: the others are 0 in any reachable state
    held = np.array([l == 0 or (T0 - 1) >> (l - 1) & 1 for l in range(8)], bool)
    g, g_ref = (x[:-1] + (x[-1][:, :, held],) for x in (g, g_ref))
  names = ('dq', 'dk', 'dv', 'dg') + (('dlam',) if hierarchy else ()) + ('dS0',)
  for name, x, y in zip(names, g, g_ref, strict=True):
    assert_close(x, y, **(GRAD_GATES if name in ('dg', 'dlam') else GRAD), name=name)


def test_short_chunks_fall_back_to_xla_form():
  data = lm.make_data(8, 2, 40, fam=FAM)
  args = args_of(data, jnp.float32, True)
  for kernel, op, a in ((pk.loglinear_ssd_chunked, ops_loglinear.loglinear_ssd_chunked, args),
                        (pk.ssd_chunked, ops_mamba2.ssd_chunked, args[:4])):
    kw = dict(chunk_size=8, return_final_state=True)
    out = jax.jit(functools.partial(kernel, interpret=True, **kw))(*a)
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(jax.jit(functools.partial(op, **kw))(*a))):
      np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match='chunk_size'):
    pk.ssd_chunked(*args[:4], chunk_size=24)


def test_every_kernel_lowers_for_cuda():
  """Forward and the three backward kernels, aligned and packed, lower through Pallas-Triton for
  an H200 (from CPU)."""
  dev = jax.sharding.AbstractDevice(device_kind='NVIDIA H200', platform='gpu', num_cores=132)
  B, T, G, H, K, V, L = 2, 200, 1, 4, 128, 64, 9
  S = jax.ShapeDtypeStruct
  shapes = [S((B, T, G, K), jnp.bfloat16), S((B, T, G, K), jnp.bfloat16),
            S((B, T, H, V), jnp.bfloat16), S((B, T, H), jnp.float32),
            S((B, T, H, L), jnp.float32)]
  seg = S((B, T), jnp.int32)
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
    for fn, n in ((pk.loglinear_ssd_chunked, 5), (pk.ssd_chunked, 4)):
      for packed in (False, True):
        loss = lambda *a, fn=fn, packed=packed: jnp.sum(
            fn(*a[:n], segment_ids_BT=a[n] if packed else None).astype(jnp.float32))
        text = jax.jit(jax.grad(loss, argnums=tuple(range(n)))).trace(
            *shapes[:n], seg).lower(lowering_platforms=('cuda',)).as_text()
        # with segment ids both the aligned and the packed kernels are compiled (lax.cond)
        assert text.count('__gpu$xla.gpu.triton') == (8 if packed else 4), (fn.__name__, packed)


# ------------------------------------------------------------------------------------------------
# GPU (docs/correctness.md#gpu-tests): bf16 inputs vs the fp32 XLA chunked form (precision HIGHEST)


def _gpu_inputs(B, T, G, H, K, V, seed=0):
  L = math.ceil(math.log2(T)) + 1
  ks = jax.random.split(jax.random.PRNGKey(seed), 6)
  q = jax.random.normal(ks[0], (B, T, G, K), jnp.bfloat16)
  k = jax.random.normal(ks[1], (B, T, G, K), jnp.bfloat16)
  v = jax.random.normal(ks[2], (B, T, H, V), jnp.bfloat16)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H), jnp.float32))
  lam = jax.nn.softplus(jax.random.normal(ks[4], (B, T, H, L), jnp.float32))
  cot = jax.random.normal(ks[5], (B, T, H, V), jnp.float32)
  return (q, k, v, g, lam), cot


@pytest.mark.gpu
@pytest.mark.parametrize('hierarchy', [True, False], ids=['loglinear_mamba2', 'mamba2'])
def test_gpu_bf16_prefill_states(hierarchy):
  """Prefill at a GPU shape, two packed documents and padding: output and final state (kernels
  plus XLA's state terms) on bf16 inputs against the XLA chunked form on their float32 copies
  (docs/correctness.md#gpu-tests: rel <= 5e-3)."""
  check_bf16_prefill_states(hierarchy, T=4096, interpret=False)


def check_bf16_prefill_states(hierarchy, T, interpret):
  (q, k, v, g, lam), _ = _gpu_inputs(2, T, 1, 8, 128, 128)
  args = (q, k, v, g) + ((lam,) if hierarchy else ())
  seg = np.repeat([[1] * (T // 4) + [2] * (T // 2) + [0] * (T // 4)], 2, 0)
  kw = dict(segment_ids_BT=jnp.asarray(seg, jnp.int32), scale=128 ** -0.5,
            return_final_state=True)
  kfn = pk.loglinear_ssd_chunked if hierarchy else pk.ssd_chunked
  rfn = ops_loglinear.loglinear_ssd_chunked if hierarchy else ops_mamba2.ssd_chunked
  o, state = jax.jit(functools.partial(kfn, interpret=interpret, **kw))(*args)
  with jax.default_matmul_precision('highest'):
    o_ref, state_ref = jax.jit(functools.partial(rfn, **kw))(*[a.astype(jnp.float32)
                                                               for a in args])
  assert_close(o.astype(jnp.float32), o_ref, rel=5e-3, name='output')
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state_ref), strict=True):
    assert_close(a, b, rel=5e-3, name='final state')


@pytest.mark.gpu
@pytest.mark.parametrize('B,T,G,H,D,hierarchy,cu_seqlens', [
    (2, 1024, 1, 8, 128, True, None), (2, 1024, 1, 8, 128, False, None),
    (1, 2000, 2, 8, 128, True, [0, 15, 333, 2000]), (1, 8192, 1, 4, 64, True, None),
    (1, 16384, 1, 4, 64, True, None)])   # 11 chunk levels (docs/correctness.md#gpu-tests)
def test_gpu_bf16_forward_and_gradients(B, T, G, H, D, hierarchy, cu_seqlens):
  args, cot = _gpu_inputs(B, T, G, H, D, D)
  n = 5 if hierarchy else 4
  args = args[:n]
  seg = None if cu_seqlens is None else hierarchy_ops.segment_ids_from_cu_seqlens(cu_seqlens, T)
  kw = dict(scale=D ** -0.5, segment_ids_BT=seg)
  kfn = functools.partial(pk.loglinear_ssd_chunked if hierarchy else pk.ssd_chunked, **kw)
  rfn = functools.partial(ops_loglinear.loglinear_ssd_chunked if hierarchy
                          else ops_mamba2.ssd_chunked, **kw)
  assert_bf16_kernel_matches_fp32(kfn, rfn, args, cot, ('dq', 'dk', 'dv', 'dg', 'dlam')[:n])


# ------------------------------------------------------------------------------------------------
# The level scan on Mosaic GPU (KernelConfig(backend='mosaic'): kernel_mgpu)

MOSAIC = pk.KernelConfig(block_v=32, backend='mosaic')


@pytest.mark.parametrize('layout', ['aligned', 'packed'])
@pytest.mark.parametrize('hierarchy', [True, False], ids=['loglinear_mamba2', 'mamba2'])
def test_mosaic_level_scan_equals_fp64_oracle(hierarchy, layout):
  """ssd_chunked / loglinear_ssd_chunked with KernelConfig(backend='mosaic') (interpret mode,
  bf16: every pass on the Mosaic kernel): the output and dq, dk, dv, dg, dlam == the fp64
  recurrent oracle on the inputs' float64 copies within the GPU tests' bf16 tolerances (rel 5e-3,
  dg and dlam 2e-2: docs/correctness.md#gpu-tests). GQA (1 key group, 2 heads), T = 300 in chunks
  of 64 (5 chunks, the last partial: two level streams, each read, written and reset), K = V = 64
  with block_v 32 (two blocks of V; the dq pass blocks K). packed: documents of 70, 1 and 179
  tokens starting inside chunks, then padding (the packed mode: levels from positions in each
  document, pairs with the neighbouring chunk, per-token stream masks)."""
  T, scale, n = 300, 0.7, 5 if hierarchy else 4
  data = lm.make_data(21, 1, T, fam=FAM, G=1, H=2, K=64, V=64, L=10, lam='softplus')
  cot = jnp.asarray(np.random.default_rng(8).standard_normal((1, T, 2, 64)), jnp.float32)
  seg = None
  if layout == 'packed':
    seg = jnp.asarray([[1] * 70 + [2] + [3] * 179 + [0] * 50], jnp.int32)
  kernel = functools.partial(pk.loglinear_ssd_chunked if hierarchy else pk.ssd_chunked,
                             chunk_size=64, scale=scale, interpret=True, config=MOSAIC,
                             segment_ids_BT=seg)
  oracle = functools.partial(ops_loglinear.loglinear_ssd_recurrent if hierarchy
                             else ops_mamba2.ssd_recurrent, scale=scale, segment_ids_BT=seg)

  def run(fn, args):
    o, vjp = jax.vjp(lambda *a: fn(*a).astype(cot.dtype if a[0].dtype != jnp.float64
                                                else jnp.float64), *args)
    return o, vjp(cot.astype(o.dtype))
  o, grads = jax.jit(lambda *a: run(kernel, a))(*args_of(data, jnp.bfloat16, hierarchy))
  with jax.enable_x64(True):
    o_ref, refs = jax.jit(lambda *a: run(oracle, a))(*args_of(data, jnp.float64, hierarchy))
  assert_close(o, o_ref, rel=5e-3, name='output')
  for name, x, r in zip(('dq', 'dk', 'dv', 'dg', 'dlam')[:n], grads, refs):
    assert_close(x.astype(jnp.float32), r, rel=5e-3 if name in ('dq', 'dk', 'dv') else 2e-2,
                 name=name)


@pytest.mark.parametrize('reverse', [False, True], ids=['causal', 'anti_causal'])
def test_mosaic_level_scan_equals_triton_with_offset_positions(reverse):
  """kernel_mgpu.level_scan == kernel.level_scan (interpret mode, bf16, float32 outputs, the
  backward's hi + lo states) in packed mode with every level (all_levels: positions continuing an
  initial state's, as a chunked continuation runs): a row of documents starting inside chunks
  then padding, and a row whose one document starts at position 1000; the causal scan with the
  dlam output. Relative error within 1e-3 (they differ in float32 rounding, which can flip a
  bf16 rounding of the pair weights)."""
  B, P, H, K, V, C, L = 2, 256, 2, 64, 32, 64, 12
  rng = np.random.default_rng(5)
  bf16 = lambda *s: jnp.asarray(rng.standard_normal(s) / np.sqrt(s[-1]), jnp.bfloat16)  # noqa
  a, b, c, qx = bf16(B, P, 1, K), bf16(B, P, 1, K), bf16(B, P, H, V), bf16(B, P, H, V)
  g = jnp.asarray(-0.3 * np.logaddexp(0, -rng.standard_normal((B, H, P))), jnp.float32)
  lam = jnp.asarray(rng.uniform(0.2, 1.5, (B, H, L, P)), jnp.float32)
  pos = np.stack([np.r_[np.arange(40), np.arange(160), np.arange(30), -np.ones(26, int)],
                  1000 + np.arange(P)]).astype(np.int32)
  doc = np.stack([np.r_[[1] * 40, [2] * 160, [3] * 30, [0] * 26], np.ones(P, int)])
  kw = dict(heads=H, chunk_size=C, reverse=reverse, levels=L, block_v=16, precise_states=True,
            all_levels=True, interpret=True)
  args = (a, b, c, g, lam, None if reverse else qx, jnp.asarray(pos), jnp.asarray(doc, jnp.int32))
  mosaic = jax.jit(functools.partial(kernel_mgpu.level_scan, **kw))(*args)
  triton = jax.jit(functools.partial(triton_kernel.level_scan, **kw))(*args)
  for name, x, y in zip(('out', 'dlam'), *(jax.tree.leaves(o) for o in (mosaic, triton))):
    assert x.shape == y.shape, name
    if name == 'dlam':     # partial sums per block of V
      x, y = jnp.sum(x, axis=0), jnp.sum(y, axis=0)
    assert_close(x, y, rel=1e-3, name=name)


def test_mosaic_level_scan_lowers_for_cuda_at_8k():
  """At T = 8192, 16 heads x 128, bf16 (the benchmark's shape), the forward and backward of both
  mixers under backend='mosaic' lower for CUDA from CPU (Mosaic GPU's layout inference and
  checks run here): with segment ids both the aligned and the packed kernels are compiled (a
  lax.cond picks one at run time), every pass on the Mosaic kernel, none on the Triton lowering."""
  B, T, G, H, K, L = 1, 8192, 1, 16, 128, 14
  S = jax.ShapeDtypeStruct
  shapes = [S((B, T, G, K), jnp.bfloat16), S((B, T, G, K), jnp.bfloat16),
            S((B, T, H, K), jnp.bfloat16), S((B, T, H), jnp.float32),
            S((B, T, H, L), jnp.float32)]
  dev = jax.sharding.AbstractDevice(device_kind='NVIDIA H100 80GB HBM3', platform='gpu',
                                    num_cores=132)
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
    for fn, n in ((pk.loglinear_ssd_chunked, 5), (pk.ssd_chunked, 4)):
      loss = lambda *a, fn=fn, n=n: jnp.sum(fn(  # noqa: E731
          *a[:n], segment_ids_BT=a[n], config=MOSAIC).astype(jnp.float32))
      text = jax.jit(jax.grad(loss, argnums=tuple(range(n)))).trace(
          *shapes[:n], S((B, T), jnp.int32)).lower(lowering_platforms=('cuda',)).as_text()
      for name in ('level_scan_mgpu_fwd', 'level_scan_mgpu_rev', 'level_scan_mgpu_packed_fwd',
                   'level_scan_mgpu_packed_rev'):
        assert name in text, (fn.__name__, name)
      assert '__gpu$xla.gpu.triton' not in text, fn.__name__


def test_mosaic_backend_rejects_what_it_cannot_serve():
  data = lm.make_data(12, 1, 64, fam=FAM, K=64, V=64)
  kernel = functools.partial(pk.loglinear_ssd_chunked, chunk_size=64, interpret=True)
  with pytest.raises(ValueError, match="backend='mosaic'.*dtype='float32'"):
    kernel(*args_of(data, jnp.float32, True), config=MOSAIC)
  bf16 = args_of(data, jnp.bfloat16, True)
  with pytest.raises(ValueError, match="chunk_size=32"):
    kernel(*bf16, config=MOSAIC, chunk_size=32)
  with pytest.raises(ValueError, match="block_v=8"):
    kernel(*bf16, config=MOSAIC._replace(block_v=8))
  narrow = args_of(lm.make_data(12, 1, 64, fam=FAM, K=32, V=64), jnp.bfloat16, True)
  with pytest.raises(ValueError, match="feature width of a / b=32"):
    kernel(*narrow, config=MOSAIC)


@pytest.mark.gpu
@pytest.mark.parametrize('B,T,H,D,hierarchy,cu_seqlens', [
    (2, 1024, 8, 128, True, None), (2, 1024, 8, 128, False, None),
    (1, 2000, 8, 128, True, [0, 15, 333, 2000]), (1, 16384, 4, 64, True, None)])
def test_gpu_bf16_mosaic_level_scan(B, T, H, D, hierarchy, cu_seqlens):
  """test_gpu_bf16_forward_and_gradients's check with every pass on the Mosaic kernel."""
  args, cot = _gpu_inputs(B, T, 1, H, D, D)
  n = 5 if hierarchy else 4
  seg = None if cu_seqlens is None else hierarchy_ops.segment_ids_from_cu_seqlens(cu_seqlens, T)
  kw = dict(scale=D ** -0.5, segment_ids_BT=seg)
  kfn = functools.partial(pk.loglinear_ssd_chunked if hierarchy else pk.ssd_chunked,
                          config=MOSAIC, **kw)
  rfn = functools.partial(ops_loglinear.loglinear_ssd_chunked if hierarchy
                          else ops_mamba2.ssd_chunked, **kw)
  assert_bf16_kernel_matches_fp32(kfn, rfn, args[:n], cot, ('dq', 'dk', 'dv', 'dg', 'dlam')[:n])
