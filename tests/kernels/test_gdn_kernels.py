"""pallas_kernels.gdn (GDN and log-linear GDN): the Pallas forward (interpret mode on CPU)
equals the lloglin.ops chunked forms and the fp64 oracles, and their gradients equal jax.grad of
the fp64 oracle (docs/correctness.md#cpu-tests); every kernel lowers for CUDA from CPU
(docs/correctness.md#kernels-on-the-cpu-without-a-gpu); GPU checks at the shapes and tolerances of
docs/correctness.md#gpu-tests (skipped without a GPU)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import hierarchy
from pallas_kernels import gdn as pk
from pallas_kernels.gdn import chunked, chunkwise
from tests.kernels.helpers import (assert_bf16_kernel_matches_fp32, continuation_segments,
                                   one_document_rows)
from tests.ops import linear_mixers as lm
from tests.ops.helpers import assert_close

GDN, LL = lm.FAMILIES['gdn'], lm.FAMILIES['loglinear_gdn']
GRAD = dict(rel=1e-4)            # dq, dk, dv (docs/correctness.md#cpu-tests)
GRAD_GATES = dict(rel=5e-4)      # dg, dbeta, dlam


def kernel_of(fam):
  return pk.loglinear_gdn_chunked if fam.lam else pk.gdn_chunked


@functools.cache
def kernel_fn(fam_name, chunk_size, scale=1.0):
  fn = kernel_of(lm.FAMILIES[fam_name])
  return jax.jit(functools.partial(fn, chunk_size=chunk_size, scale=scale, interpret=True))


def args_of(data, fam, dtype, T=None):
  return tuple(jnp.asarray(data[n][:, :T], dtype) for n in fam.arg_names)


@pytest.mark.parametrize('fam,T,C', [(GDN, 1, 16), (GDN, 150, 64), (GDN, 100, 32), (LL, 1, 16),
                                      (LL, 17, 16), (LL, 100, 32)],
                         ids=['gdn-1-16', 'gdn-150-64', 'gdn-100-32', 'loglinear_gdn-1-16',
                              'loglinear_gdn-17-16', 'loglinear_gdn-100-32'])
def test_forward_equals_oracle_and_xla_form(fam, T, C):
  """T in {1, 17, 100, 150} over the two families, chunks 16 / 32 / 64 (GDN's UT transform in
  1, 2 and 4 sub-blocks; the other tests add T = 40, 45, 64, 80, 96 and 128); vs the XLA chunked
  form at T = 100."""
  data, rec, _ = lm.reference(fam.name)                     # fp64 recurrent oracle, T = 300
  with jax.enable_x64(True):
    out = kernel_fn(fam.name, C)(*args_of(data, fam, jnp.float32, T))
    if T == 100:
      xla = lm.jitted(fam.chunked, chunk_size=C)(*args_of(data, fam, jnp.float32, T))
      assert_close(out, xla, **lm.fwd_tol(rec[:, :T]), name=f'kernel vs XLA form T={T} C={C}')
  assert out.dtype == jnp.float32
  assert_close(out, rec[:, :T], **lm.fwd_tol(rec[:, :T]), name=f'kernel vs oracle T={T} C={C}')


def test_lam_ones_reduces_to_gdn_with_gqa_and_head_dims():
  """lam == 1: log-linear kernel == GDN kernel == GDN oracle; GQA (1 q/k group, 2 heads),
  dk = 32 / dv = 64 (V blocks), g = logsigmoid / 0.1 (in-chunk exponents reach hundreds)."""
  data = lm.make_data(4, 2, 64, fam=LL, G=1, H=2, K=32, V=64, tau=0.1, lam='ones')
  with jax.enable_x64(True):
    ref = lm.jitted(GDN.recurrent)(*args_of(data, GDN, jnp.float64))
    out_ll = kernel_fn(LL.name, 32)(*args_of(data, LL, jnp.float32))
    out_gdn = kernel_fn(GDN.name, 32)(*args_of(data, GDN, jnp.float32))
  assert_close(out_ll, ref, **lm.fwd_tol(ref), name='loglinear, lam = 1')
  assert_close(out_gdn, ref, **lm.fwd_tol(ref), name='gdn')


def test_beta_zero_is_pure_decay():
  """beta == 0 on every token: nothing is written, the states only decay from 0, o == 0;
  beta == 0 on half the tokens, beta up to 2 elsewhere and g == 0 on half (identity transitions)
  still match the oracle (log-linear GDN: every stream of plain GDN's update, plus levels)."""
  data = lm.make_data(3, 2, 80, fam=LL, beta_scale=2.0, g_zero_frac=0.5)
  rng = np.random.default_rng(3)
  data['beta'] = np.where(rng.uniform(size=data['beta'].shape) < 0.5, 0.0, data['beta'])
  zero = dict(data, beta=np.zeros_like(data['beta']))
  with jax.enable_x64(True):
    ref = lm.jitted(LL.recurrent)(*args_of(data, LL, jnp.float64))
    out = kernel_fn(LL.name, 16)(*args_of(data, LL, jnp.float32))
    out0 = kernel_fn(LL.name, 16)(*args_of(zero, LL, jnp.float32))
  assert_close(out, ref, **lm.fwd_tol(ref), name='beta half zero')
  np.testing.assert_array_equal(np.asarray(out0), 0.0)


@pytest.mark.parametrize('packed', [False, True], ids=['aligned', 'packed'])
def test_each_level_isolated(packed):
  """lam one-hot on one level at a time: kernel == fp64 quadratic oracle (every level mask; packed:
  documents of 64 and 32 tokens, each level's stream and in-chunk mask from document positions)."""
  T = lm.PACKED_T if packed else 128
  data = dict(lm.make_data(5, 1, T, fam=LL, H=1, L=8))
  seg = jnp.asarray(lm.packed_segment_ids()[2:]) if packed else None
  kfn = jax.jit(functools.partial(pk.loglinear_gdn_chunked, segment_ids_BT=seg, chunk_size=16,
                                  interpret=True))
  oracle = jax.jit(functools.partial(LL.quadratic, segment_ids_BT=seg))
  for level in range(8):
    data['lam'] = np.zeros_like(data['lam'])
    data['lam'][..., level] = 1.0
    with jax.enable_x64(True):
      ref = np.asarray(oracle(*args_of(data, LL, jnp.float64)))
      out = kfn(*args_of(data, LL, jnp.float32))
    assert np.abs(ref).max() > 1e-3 or (packed and level == 7), level
    assert_close(out, ref, **lm.fwd_tol(ref), name=f'level {level}')


def test_aligned_level_streams_reset_on_chunk_starts():
  """log-linear GDN's levels above the chunk as GDN rows (chunked._aligned_streams): every
  stream's blocks start on chunk starts, its "documents" (doc ids) start exactly at
  hierarchy.level_stream_masks' resets, and GDN's packed masks drop the incoming state in those
  chunks only (rho = keep = 0 over the chunk) and keep every write (wm = 1)."""
  B, P, C = 2, 512, 16
  streams = chunked._aligned_streams(chunked._Static(C, 1.0, 10, True, None), B, P)
  assert streams.levels == list(range(5, 10))
  X = len(streams.levels)
  pos = jnp.broadcast_to(jnp.arange(P), (B, P))
  reset = np.asarray(hierarchy.level_stream_masks(pos, pos >= 0, streams.levels)[0])
  doc = np.asarray(streams.packed.doc_BP).reshape(X, B, P)
  np.testing.assert_array_equal(np.diff(doc, axis=-1) != 0, reset[..., 1:])
  by_chunk = reset.reshape(X, B, P // C, C)
  assert not by_chunk[..., 1:].any()                            # only on chunk starts
  dropped = np.repeat(~by_chunk[..., :1], C, -1)
  for mask in (streams.packed.read_BXP, streams.packed.keep_BXP):
    np.testing.assert_array_equal(np.asarray(mask).reshape(X, B, P // C, C), dropped)
  np.testing.assert_array_equal(np.asarray(streams.packed.wm_BXP), 1.0)


def _value_and_vjp(fn, cot):
  """jitted args -> (fn(*args), vjp of cot): output and gradients from one compilation."""
  def run(*args):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(cot.astype(out.dtype))
  return jax.jit(run)


@pytest.mark.parametrize('fam,streams', [(GDN, None), (LL, 'gdn'), (LL, 'scan')],
                         ids=['gdn', 'loglinear_gdn', 'loglinear_gdn-level_scan'])
def test_gradients_equal_fp64_oracle(fam, streams, monkeypatch):
  """Forward and custom_vjp gradients (Pallas backward) == the fp64 recurrent oracle and its
  jax.grad, with GQA, K != V, a partial last chunk (T = 45 in chunks of 16: streams of two levels)
  and scale != 1; GDN's chunk kernels loop over two blocks of V (CHUNK_BLOCK_V 16); log-linear
  GDN's levels above the chunk on GDN's kernels and on the level-stream scans."""
  monkeypatch.setattr(chunkwise, 'CHUNK_BLOCK_V', 16)
  T, C, scale = 45, 16, 0.7
  data = lm.make_data(6, 2, T, fam=fam, G=1, H=2, K=16, V=32, L=7, lam='softplus')
  cot = jnp.asarray(np.random.default_rng(7).standard_normal((2, T, 2, 32)))
  oracle = functools.partial(fam.recurrent, scale=scale)
  with jax.enable_x64(True):
    out_ref, ref = _value_and_vjp(oracle, cot)(*args_of(data, fam, jnp.float64))
    kernel = kernel_fn(fam.name, C, scale) if streams is None else jax.jit(functools.partial(
        pk.loglinear_gdn_chunked, chunk_size=C, scale=scale, interpret=True,
        level_streams=streams))
    out, got = _value_and_vjp(kernel, cot)(*args_of(data, fam, jnp.float32))
  assert_close(out, out_ref, **lm.fwd_tol(out_ref), name='output')
  for name, x, y in zip(('dq', 'dk', 'dv', 'dg', 'dbeta', 'dlam'), got, ref):
    assert x.dtype == jnp.float32
    assert_close(x, y, **(GRAD if name in ('dq', 'dk', 'dv') else GRAD_GATES), name=name)


@pytest.mark.parametrize('fam,layout,streams', [
    (GDN, 'packed', None), (GDN, 'one_document', None), (LL, 'packed', 'gdn'),
    (LL, 'one_document', 'gdn'), (LL, 'packed', 'scan')],
    ids=['gdn-packed', 'gdn-one_document', 'loglinear_gdn-packed', 'loglinear_gdn-one_document',
         'loglinear_gdn-packed-level_scan'])
def test_packed_documents(fam, layout, streams):
  """Packed rows (documents of 1 and 15 tokens, padding between and after: the packed kernels;
  log-linear GDN: every level as a GDN run, or the level-stream scans) and rows of one document
  then padding (T = 40: GDN's packed kernels, log-linear GDN's aligned ones), NaN-poisoned:
  outputs and gradients == those of the fp64 recurrent oracle, padding outputs and gradients 0."""
  seg = lm.packed_segment_ids() if layout == 'packed' else one_document_rows()
  B, T = seg.shape
  data = lm.poison_padding(lm.make_data(2, B, T, fam=fam, L=8), seg)
  seg = jnp.asarray(seg)
  cot = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, 2, 16)), jnp.float32)
  kfn = functools.partial(kernel_of(fam), segment_ids_BT=seg, chunk_size=16, interpret=True,
                          **({} if streams is None else {'level_streams': streams}))
  oracle = functools.partial(fam.recurrent, segment_ids_BT=seg)
  with jax.enable_x64(True):
    ref, want = _value_and_vjp(oracle, cot)(*args_of(data, fam, jnp.float64))
    out, got = _value_and_vjp(kfn, cot)(*args_of(data, fam, jnp.float32))
  assert_close(out, ref, **lm.fwd_tol(ref), name='output')
  assert np.all(np.asarray(out)[np.asarray(seg) == 0] == 0)
  for name, x, y in zip(('dq', 'dk', 'dv', 'dg', 'dbeta', 'dlam'), got, want):
    assert np.all(np.asarray(x)[np.asarray(seg) == 0] == 0), name
    assert_close(x, y, **GRAD_GATES, name=name)


def test_one_level_and_all_padding():
  """L = 1 (no level stream at all) at T = 1, a real token and a padding row: equal to the XLA
  form, gradients included (the packed kernels, without streams, are traced for the lax.cond)."""
  data = lm.make_data(9, 2, 1, fam=LL, L=1)
  seg = jnp.asarray([[1], [0]])
  cot = jnp.ones((2, 1, 2, 16), jnp.float32)
  kfn = functools.partial(pk.loglinear_gdn_chunked, segment_ids_BT=seg, chunk_size=16,
                          interpret=True)
  out, got = _value_and_vjp(kfn, cot)(*args_of(data, LL, jnp.float32))
  ref, want = _value_and_vjp(functools.partial(LL.chunked, segment_ids_BT=seg, chunk_size=16),
                             cot)(*args_of(data, LL, jnp.float32))
  for name, x, y in zip(('o', 'dq', 'dk', 'dv', 'dg', 'dbeta', 'dlam'), (out,) + got,
                        (ref,) + want):
    assert_close(x, y, rel=1e-5, name=name)


def _loss_with_states(fn, seg, cot_o, cot_s, scale, initial, **kw):
  """(args..., S0) -> (<o, cot_o> + <final state, cot_s>, (o, final state)); initial(S0) is the
  initial-state keyword; a FenwickState contributes its level states."""
  def f(*a):
    o, s = fn(*a[:-1], segment_ids_BT=seg, scale=scale, return_final_state=True,
              **initial(a[-1]), **kw)
    s = getattr(s, 'S_BHLKV', s)
    total = jnp.sum(o * cot_o.astype(o.dtype)) + jnp.sum(s * cot_s.astype(s.dtype))
    return total, (o, s)
  return f


def _initial(fam, t0_B):
  """S0 -> the initial-state keyword of fam's chunked function."""
  if fam.lam:
    return lambda S0: {'initial_state': hierarchy.FenwickState(S0, t0_B)}
  return lambda S0: {'initial_state_BHKV': S0}


@pytest.mark.parametrize('layout', ['none', 'packed'])
@pytest.mark.parametrize('fam', [GDN, LL], ids=['gdn', 'loglinear_gdn'])
def test_states_equal_fp64_oracle(fam, layout):
  """A chunked continuation through the kernels: initial state (the state after 37 tokens; the
  streams start from it, log-linear positions continue from its t_B) and final state
  (log-linear: the Fenwick levels from the packed kernels' streams) == the fp64 recurrent oracle,
  values and gradients (into S0, out of the final state), with GQA, a partial chunk, scale != 1
  and, packed, a second document (starting empty, its state the final one) and padding."""
  B, T0, T, C, scale, L = 2, 37, 45, 16, 0.7, 8
  data = lm.make_data(10, B, T0 + T, fam=fam, G=1, H=2, K=16, V=32, L=L, lam='softplus')
  seg = continuation_segments(layout, B, T)
  with jax.enable_x64(True):
    prefix = tuple(x[:, :T0] for x in args_of(data, fam, jnp.float64))
    _, state0 = jax.jit(functools.partial(fam.recurrent, return_final_state=True))(*prefix)
  S0 = np.asarray(getattr(state0, 'S_BHLKV', state0))
  rng = np.random.default_rng(4)
  cot_o, cot_s = (jnp.asarray(rng.standard_normal(x)) for x in ((B, T, 2, 32), S0.shape))
  initial = _initial(fam, jnp.full((B,), T0, jnp.int32))

  def run(fn, dtype, **kw):
    args = tuple(x[:, T0:] for x in args_of(data, fam, dtype)) + (jnp.asarray(S0, dtype),)
    loss = _loss_with_states(fn, seg, cot_o, cot_s, scale, initial, **kw)
    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))), has_aux=True))(*args)

  with jax.enable_x64(True):
    (_, (o_ref, s_ref)), g_ref = run(fam.recurrent, jnp.float64)
    (_, (o, s)), g = run(kernel_of(fam), jnp.float32, chunk_size=C, interpret=True)
  assert_close(o, o_ref, **lm.fwd_tol(o_ref), name='output')
  assert_close(s, s_ref, **lm.fwd_tol(s_ref), name='final state')
  if fam.lam:   # only the buckets a state after T0 tokens holds are inputs (tests of SSD: same)
    held = np.array([l == 0 or (T0 - 1) >> (l - 1) & 1 for l in range(L)], bool)
    g, g_ref = (x[:-1] + (x[-1][:, :, held],) for x in (g, g_ref))
  names = ('dq', 'dk', 'dv', 'dg', 'dbeta') + (('dlam',) if fam.lam else ()) + ('dS0',)
  for name, x, y in zip(names, g, g_ref, strict=True):
    assert x.dtype == jnp.float32
    assert_close(x, y, **(GRAD if name in ('dq', 'dk', 'dv', 'dS0') else GRAD_GATES), name=name)


def test_short_chunks_fall_back_to_xla_form():
  data = lm.make_data(8, 2, 40, fam=LL)
  for fam in (GDN, LL):
    args = args_of(data, fam, jnp.float32)
    kw = dict(chunk_size=8, return_final_state=True)
    out = jax.jit(functools.partial(kernel_of(fam), interpret=True, **kw))(*args)
    ref = jax.jit(functools.partial(fam.chunked, **kw))(*args)
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
      np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match='chunk_size'):
    pk.loglinear_gdn_chunked(*args, chunk_size=24)


def test_bf16_gradients_leave_the_kernels_rounded_once():
  """grad_dtype=bf16 (what the custom_vjp asks when no GQA group sum follows): dq, dk and dv are
  written in bf16 by the kernels and equal the float32 ones rounded, bit for bit."""
  B, P, H, D, C = 1, 32, 1, 16, 16
  ks = jax.random.split(jax.random.key(3), 6)
  q, k, v, do = (jax.random.normal(x, (B, P, H, D)).astype(jnp.bfloat16) for x in ks[:4])
  g = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, H, P)))
  beta = jax.nn.sigmoid(jax.random.normal(ks[5], (B, H, P)))
  kw = dict(chunk_size=C, cfg=pk.KernelConfig(block_v=16, backend='triton'), interpret=True)
  _, *res = chunkwise.gdn_forward(q, k, v, g, beta, with_residuals=True, **kw)
  grads = {dt: chunkwise.gdn_backward(q, k, v, g, beta, None, res, do, grad_dtype=dt, **kw)
           for dt in (jnp.float32, jnp.bfloat16)}
  for name, x, y in zip(('dq', 'dk', 'dv'), grads[jnp.bfloat16], grads[jnp.float32]):
    assert x.dtype == jnp.bfloat16, name
    np.testing.assert_array_equal(np.asarray(x, np.float32),
                                  np.asarray(y.astype(jnp.bfloat16), np.float32), err_msg=name)


def test_forward_at_64k_tokens_is_not_sized_by_the_backward_states():
  """The forward alone stores no per-chunk states, so a row of 65,536 tokens x 16 heads x 128
  (2.7e9 elements of states for the backward of the level-stream scans) must still trace (it
  raised before); the level scans' backward raises, and the GDN runs' (one row per level stream,
  batches split below 2^31) traces."""
  B, T, H, D = 17, 65536, 16, 128
  S = jax.ShapeDtypeStruct
  args = (S((B, T, 1, D), jnp.bfloat16),) * 2 + (
      S((B, T, H, D), jnp.bfloat16), S((B, T, H), jnp.float32), S((B, T, H), jnp.float32),
      S((B, T, H, hierarchy.num_levels(T)), jnp.float32))
  scans = functools.partial(pk.loglinear_gdn_chunked, level_streams='scan')
  assert jax.eval_shape(scans, *args).shape == (B, T, H, D)
  with pytest.raises(ValueError, match='2\\^31'):   # the backward's states per row: too many
    jax.eval_shape(jax.grad(lambda *a: jnp.sum(scans(*a)), argnums=2), *args)
  dv = jax.eval_shape(jax.grad(lambda *a: jnp.sum(pk.loglinear_gdn_chunked(*a)), argnums=2), *args)
  assert dv.shape == (B, T, H, D)


def test_every_kernel_lowers_for_cuda():
  """Every GDN kernel (forward and backward; with segment ids the aligned and the packed ones,
  both branches of a lax.cond) lowers through Pallas-Triton for an H200 (from CPU): GDN's six
  chunkwise kernels (UT transform, state scan, output; output backward, state scan backward, chunk
  backward), log-linear GDN's rows of one document the same six (chunk_bwd leaving the UT
  inverse's transpose to ut_inverse_bwd, the seventh, once for every level), its packed rows and
  states GDN's six (every level a GDN run)."""
  dev = jax.sharding.AbstractDevice(device_kind='NVIDIA H200', platform='gpu', num_cores=132)
  B, T, G, H, K, V, L = 2, 200, 1, 4, 128, 64, 9
  S = jax.ShapeDtypeStruct
  shapes = [S((B, T, G, K), jnp.bfloat16), S((B, T, G, K), jnp.bfloat16),
            S((B, T, H, V), jnp.bfloat16), S((B, T, H), jnp.float32), S((B, T, H), jnp.float32),
            S((B, T, H, L), jnp.float32)]
  seg = S((B, T), jnp.int32)
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
    for fam in (LL, GDN):
      n = len(fam.arg_names)
      for with_ids in (False, True):
        loss = lambda *a, fn=kernel_of(fam), with_ids=with_ids: jnp.sum(
            fn(*a[:n], segment_ids_BT=a[n] if with_ids else None).astype(jnp.float32))
        text = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(n)))).trace(
            *shapes[:n], seg).lower(lowering_platforms=('cuda',)).as_text()
        aligned, packed = (6, 6) if fam is GDN else (7, 6)
        assert text.count('__gpu$xla.gpu.triton') == aligned + with_ids * packed, (fam.name,
                                                                                   with_ids)
    # final states (and GDN's initial state): the kernels' state input / output variants; the
    # log-linear final state takes the packed kernels only
    for fam, n, state in ((GDN, 6, S((B, H, K, V), jnp.float32)), (LL, 6, shapes[5])):
      def loss(*a, fam=fam):
        init = {} if fam.lam else {'initial_state_BHKV': a[5]}
        o, s = kernel_of(fam)(*a[:5 + bool(fam.lam)], segment_ids_BT=a[6],
                              return_final_state=True, **init)
        return jnp.sum(o.astype(jnp.float32)) + jnp.sum(getattr(s, 'S_BHLKV', s))
      text = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(n)))).trace(
          *shapes[:5], state, seg).lower(lowering_platforms=('cuda',)).as_text()
      assert text.count('__gpu$xla.gpu.triton') == (6 if fam.lam else 12), fam.name


# ------------------------------------------------------------------------------------------------
# GDN's forward state scan on Mosaic GPU (KernelConfig(backend='mosaic'): chunkwise_mgpu)

MOSAIC = pk.KernelConfig(block_v=64, backend='mosaic')


def _state_scans_fp64(q, k, w, u, g, S0, do, dvl, dS_end, masks, C):
  """chunkwise.state_scan and state_scan_bwd in float64 numpy (the recurrences of chunkwise's
  module docstring): ((h_BHMV, Vn_BPHV, final state_BHKV), (dh_BHMV, dVn_BPHV, dinit_BHKV))."""
  q, k, w, u, g, S, do, dvl, dS = (np.asarray(x, np.float64)
                                   for x in (q, k, w, u, g, S0, do, dvl, dS_end))
  B, P, G, K = k.shape
  H, V = u.shape[2:]
  N = P // C
  rho, wm, keep = ((np.ones((B, P)),) * 3 if masks is None else
                   (np.asarray(m, np.float64) for m in (masks.rho, masks.wm, masks.keep)))
  heads = lambda x: np.repeat(x, H // G, axis=2)  # noqa: E731
  q, k = heads(q), heads(k)
  h, vn, dh, dvn = (np.zeros(x) for x in ((B, H, N * K, V), u.shape) * 2)
  chunks = []
  for n in range(N):
    sl = slice(n * C, (n + 1) * C)
    G_ = np.cumsum(g[:, :, sl], axis=-1)
    keep_n = (keep[:, sl].max(axis=-1) > 0)[:, None, None, None]
    chunks.append((sl, np.exp(G_), np.exp(G_[..., -1:] - G_),
                   np.exp(G_[..., -1])[..., None, None] * keep_n))
  rows = lambda m, sl: m[:, sl, None, None]  # noqa: E731
  for n, (sl, _, to_end, gam) in enumerate(chunks):
    h[:, :, n * K:(n + 1) * K] = S
    vn[:, sl] = u[:, sl] - rows(rho, sl) * np.einsum('bthk,bhkv->bthv', w[:, sl], S)
    S = gam * S + np.einsum('bthk,bht,bthv->bhkv', k[:, sl], to_end, rows(wm, sl) * vn[:, sl])
  for n, (sl, eG, to_end, gam) in reversed(list(enumerate(chunks))):
    dh[:, :, n * K:(n + 1) * K] = dS
    dvn[:, sl] = dvl[:, sl] + rows(wm, sl) * np.einsum('bthk,bht,bhkv->bthv', k[:, sl], to_end,
                                                       dS)
    dS = (gam * dS + np.einsum('bthk,bht,bthv->bhkv', q[:, sl], eG, rows(rho, sl) * do[:, sl])
          - np.einsum('bthk,bthv->bhkv', w[:, sl], rows(rho, sl) * dvn[:, sl]))
  return (h, vn, S), (dh, dvn, dS)


def _output_fp64(q, k, g, h, vn, masks, C):
  """chunkwise.output in float64 numpy: O = rho o (e^G o Q) h_n + (Q K^T o E) Vn per chunk."""
  q, k, g, h, vn = (np.asarray(x, np.float64) for x in (q, k, g, h, vn))
  B, P, G, K = q.shape
  H = vn.shape[2]
  q, k = (np.repeat(x, H // G, axis=2) for x in (q, k))
  pos, doc, rho = ((np.zeros((B, P)), np.zeros((B, P)), np.ones((B, P))) if masks is None else
                   (np.asarray(m) for m in (masks.pos, masks.doc, masks.rho)))
  o = np.zeros(vn.shape)
  for n in range(P // C):
    sl = slice(n * C, (n + 1) * C)
    G_ = np.cumsum(g[:, :, sl], axis=-1)                                     # [B, H, C]
    t, u = np.tril(np.ones((C, C), bool)), sl
    pair = t & (doc[:, u, None] == doc[:, None, u]) & (pos[:, u, None] >= 0) & (
        pos[:, None, u] >= 0)                                                 # [B, C, C]
    E = np.where(pair[:, None], np.exp(G_[..., :, None] - G_[..., None, :]), 0.0)
    A = np.einsum('bthk,bshk->bhts', q[:, sl], k[:, sl]) * E
    qe = q[:, sl] * np.moveaxis(np.exp(G_), 1, 2)[..., None] * rho[:, sl, None, None]
    o[:, sl] = (np.einsum('bthk,bhkv->bthv', qe, h[:, :, n * K:(n + 1) * K])
                + np.einsum('bhts,bshv->bthv', A, vn[:, sl]))
  return o


def _ut_fp64(k, v, g, beta, masks, C):
  """chunkwise.ut_transform in float64 numpy: per chunk A = diag(beta) (K K^T o Es),
  T = (I + A)^-1, W = T diag(beta e^G) K, U = T diag(beta) V; ([B, P, H, K], [B, P, H, V],
  [B, P, H, C])."""
  k, v, g, beta = (np.asarray(x, np.float64) for x in (k, v, g, beta))
  B, P, G, K = k.shape
  H = v.shape[2]
  k = np.repeat(k, H // G, axis=2)
  pos, doc = ((np.zeros((B, P)), np.zeros((B, P))) if masks is None else
              (np.asarray(m) for m in (masks.pos, masks.doc)))
  W, U, T = np.zeros(k.shape), np.zeros(v.shape), np.zeros((B, P, H, C))
  for n in range(P // C):
    sl = slice(n * C, (n + 1) * C)
    G_ = np.moveaxis(np.cumsum(g[:, :, sl], axis=-1), 1, 2)                 # [B, C, H]
    b_ = np.moveaxis(beta[:, :, sl], 1, 2)
    pair = np.tril(np.ones((C, C), bool), -1) & (doc[:, sl, None] == doc[:, None, sl]) & (
        pos[:, sl, None] >= 0) & (pos[:, None, sl] >= 0)                     # [B, C, C]
    Es = np.where(pair[..., None], np.exp(G_[:, :, None] - G_[:, None, :]), 0.0)
    A = b_[:, :, None] * np.einsum('bthk,bshk->btsh', k[:, sl], k[:, sl]) * Es
    Tn = np.linalg.inv(np.eye(C) + np.moveaxis(A, 3, 1))                    # [B, H, C, C]
    T[:, sl] = np.moveaxis(Tn, 1, 2)
    W[:, sl] = np.einsum('bhts,bshk->bthk', Tn, k[:, sl] * (b_ * np.exp(G_))[..., None])
    U[:, sl] = np.einsum('bhts,bshv->bthv', Tn, v[:, sl] * b_[..., None])
  return W, U, T


@pytest.mark.parametrize('layout,block_v', [('aligned', 32), ('packed', 64)])
def test_mosaic_state_scans_equal_triton_and_fp64(layout, block_v):
  """chunkwise.state_scan, state_scan_bwd, output and ut_transform on Mosaic GPU (interpret mode,
  bf16: the inputs they take) == the Triton kernels on the same inputs (interpret mode) and the
  fp64 recurrences on their float64 copies: h, Vn, the final state, dh, dVn, the initial state's
  cotangent, the output (from each backend's own h and Vn), W and U within the GPU tests' bf16
  forward tolerance (rel 5e-3, docs/correctness.md#gpu-tests), the float32 UT inverse T within
  1e-5 (its products emulate float32 with bf16 WGMMAs; beta up to 2). An initial
  state and a final-state cotangent, GQA (1 key group, 2 heads), 3 chunks of 64, K = V = 64 (the
  kernels' smallest M tiles); aligned: two blocks of V (block_v 32, 64-byte swizzle); packed:
  block_v 64 (128-byte swizzle), the masks of documents starting inside chunks 0 and 2 and
  padding (chunked.py's, from segment ids)."""
  B, P, G, H, K, V, C = 2, 192, 1, 2, 64, 64, 64
  rng = np.random.default_rng(13)
  unit = lambda *s: (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True))(  # noqa: E731
      rng.standard_normal(s))
  bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
  q, k = bf16(unit(B, P, G, K)), bf16(unit(B, P, G, K))
  w = bf16(unit(B, P, H, K) * rng.uniform(0, 0.5, (B, P, H, 1)))
  u, do, dvl = (bf16(rng.standard_normal((B, P, H, V))) for _ in range(3))
  g = jnp.asarray(-np.logaddexp(0, -rng.standard_normal((B, H, P))), jnp.float32)
  S0, dS_end = (jnp.asarray(rng.standard_normal((B, H, K, V)), jnp.float32) for _ in range(2))
  beta = jnp.asarray(rng.uniform(0, 2, (B, H, P)), jnp.float32)   # 2: negative eigenvalues
  masks = None
  if layout == 'packed':
    seg = np.ones((B, P), np.int32)
    seg[0, 20:150], seg[0, 150:] = 2, 3
    seg[1, 170:] = 0
    masks = chunked._gdn_masks(chunked._packed_masks(jnp.asarray(seg), P, None, C))

  def scans(backend):
    def f(q, k, w, u, g, S0, do, dvl, dS_end, masks):
      cfg = MOSAIC._replace(backend=backend, block_v=block_v)
      L = chunkwise.launch(k, H, V, masks, C, cfg, True)
      h, vn, final = chunkwise.state_scan(L, k, w, u, g, S0, with_final=True)
      return (h, vn, final, *chunkwise.state_scan_bwd(L, q, k, w, g, do, dvl, dS_end),
              chunkwise.output(L, q, k, g, h, vn, q.dtype),
              *chunkwise.output_bwd(L, q, k, g, h, vn, do, jnp.bfloat16),
              *chunkwise.ut_transform(L, k, u, g, beta))
    return jax.jit(f)(q, k, w, u, g, S0, do, dvl, dS_end, masks)

  mosaic, triton = scans('mosaic'), scans('triton')
  ref = sum(_state_scans_fp64(q, k, w, u, g, S0, do, dvl, dS_end, masks, C), ())
  ref += (_output_fp64(q, k, g, ref[0], ref[1], masks, C),)
  names = ('h', 'Vn', 'final state', 'dh', 'dVn', 'dinit', 'output')
  for name, x, y, r in zip(names, mosaic, triton, ref):
    assert x.dtype == y.dtype
    assert_close(x.astype(jnp.float32), r, rel=5e-3, name=f'{name} vs fp64')
  # every output of both backends; output_bwd's (dVl, dQ, the output's parts of dK and dG)
  # against the Triton kernel's, whose route to the gradients is checked against the fp64 oracle
  # (test_gradients_equal_fp64_oracle; the Mosaic route: the test below)
  names += ('dVl', 'dQ', 'dK (output part)', 'dG (output part)', 'W', 'U', 'T')
  for name, x, y in zip(names, mosaic, triton, strict=True):
    assert x.dtype == y.dtype, name
    assert_close(x.astype(jnp.float32), y.astype(jnp.float32), rel=5e-3, name=f'{name} vs triton')
  for name, x, r in zip('WUT', mosaic[-3:], _ut_fp64(k, u, g, beta, masks, C)):
    assert_close(x.astype(jnp.float32), r, rel=1e-5 if name == 'T' else 5e-3, name=f'{name} vs fp64')
  # T's ten products as three bf16 WGMMAs of the operands' halves: about 2e-6 of T's largest
  # entry (1.7e-6 here; docs/algorithms/gdn.md), where one bf16 WGMMA per product is off by ~1e-3
  t_ref = np.asarray(_ut_fp64(k, u, g, beta, masks, C)[2])
  t_err = np.max(np.abs(np.asarray(mosaic[-1], np.float64) - t_ref)) / np.max(np.abs(t_ref))
  assert t_err <= 3e-6, t_err


@pytest.mark.parametrize('layout', ['aligned', 'packed'])
def test_mosaic_chunk_bwd_equals_triton(layout):
  """chunkwise.chunk_bwd on Mosaic GPU == the Triton kernel on the same inputs (interpret mode,
  bf16 tiles, float32 T, dk_out and dG_out; GQA, 3 chunks of 64, K = V = 64, beta up to 2; packed:
  documents starting inside chunks 0 and 2 and padding): dk, dv, dg and dbeta within 1e-3 (both
  round the same operands to bf16; they differ in the order of float32 sums). Its route to the
  gradients against float64: test_gdn_with_mosaic_state_scans_equals_fp64_oracle."""
  B, P, G, H, K, V, C = 1, 192, 1, 2, 64, 64, 64
  rng = np.random.default_rng(17)
  bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)  # noqa: E731
  normal = lambda *s: rng.standard_normal(s)  # noqa: E731
  k = bf16(normal(B, P, G, K) / 8)
  v, vn, dvn = (bf16(normal(B, P, H, V)) for _ in range(3))
  h, dh = (bf16(normal(B, H, P // C * K, V) * 0.3) for _ in range(2))
  g = jnp.asarray(-np.logaddexp(0, -normal(B, H, P)), jnp.float32)
  beta = jnp.asarray(rng.uniform(0, 2, (B, H, P)), jnp.float32)
  t = jnp.asarray(normal(B, P, H, C) * 0.3, jnp.float32)
  dk_out, dg_out = jnp.asarray(normal(B, P, H, K), jnp.float32), jnp.asarray(normal(B, H, P),
                                                                             jnp.float32)
  masks = None
  if layout == 'packed':
    seg = np.ones((B, P), np.int32)
    seg[0, 20:150], seg[0, 170:] = 2, 0
    masks = chunked._gdn_masks(chunked._packed_masks(jnp.asarray(seg), P, None, C))

  def run(backend):
    L = chunkwise.launch(k, H, V, masks, C, MOSAIC._replace(backend=backend), True)
    return jax.jit(lambda *a: chunkwise.chunk_bwd(L, *a))(k, v, g, beta, t, h, dh, vn, dvn,
                                                          dk_out, dg_out)
  for name, x, y in zip(('dk', 'dv', 'dg', 'dbeta'), run('mosaic'), run('triton'), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape, name
    assert_close(x, y, rel=1e-3, name=name)


def test_gdn_with_mosaic_state_scans_equals_fp64_oracle():
  """gdn_chunked with KernelConfig(backend='mosaic') (interpret mode, bf16; the state scans, the
  output and its backward on Mosaic GPU): output, final state from an initial state and the
  gradients of q, k, v == the fp64 recurrent oracle on the inputs' float64 copies (rel 5e-3, the
  GPU tests' bf16 tolerances of docs/correctness.md#gpu-tests); GQA, T = 150 in chunks of 64
  (the last partial), K = V = 64."""
  data = lm.make_data(11, 2, 150, fam=GDN, G=1, H=2, K=64, V=64)
  S0 = jnp.asarray(np.random.default_rng(3).standard_normal((2, 2, 64, 64)), jnp.bfloat16)
  args = args_of(data, GDN, jnp.bfloat16) + (S0,)
  cot = jnp.asarray(np.random.default_rng(4).standard_normal((2, 150, 2, 64)), jnp.float32)

  def run(fn, *a, **kw):
    def f(*a):
      o, s = fn(*a[:5], initial_state_BHKV=a[5], return_final_state=True, scale=0.7, **kw)
      return o.astype(jnp.promote_types(o.dtype, jnp.float32)), s   # bf16 -> f32, f64 stays
    (o, s), vjp = jax.vjp(f, *a)
    return o, s, vjp((cot.astype(o.dtype), jnp.zeros_like(s)))[:3]
  o, s, grads = jax.jit(lambda *a: run(pk.gdn_chunked, *a, chunk_size=64, interpret=True,
                                       config=MOSAIC))(*args)
  with jax.enable_x64(True):
    o_ref, s_ref, refs = jax.jit(lambda *a: run(GDN.recurrent, *a))(
        *(x.astype(jnp.float64) for x in args))
  assert_close(o.astype(jnp.float32), o_ref, rel=5e-3, name='output')
  assert_close(s, s_ref, rel=5e-3, name='final state')
  for name, x, r in zip(('dq', 'dk', 'dv'), grads, refs):
    assert_close(x.astype(jnp.float32), r, rel=5e-3, name=name)


def test_loglinear_gdn_on_mosaic_equals_fp64_oracle():
  """loglinear_gdn_chunked with KernelConfig(backend='mosaic') (interpret mode, bf16): its levels
  above the chunk as plain GDN on GDN's Mosaic kernels but the dT-only chunk_bwd
  (level_streams='gdn', here two streams),
  output and every gradient == the fp64 recurrent oracle on the inputs' float64 copies at the
  GPU tests' bf16 tolerances (docs/correctness.md#gpu-tests); GQA, T = 150 in chunks of 64."""
  data = lm.make_data(13, 2, 150, fam=LL, G=1, H=2, K=64, V=64, lam='softplus')
  args = args_of(data, LL, jnp.bfloat16)
  cot = jnp.asarray(np.random.default_rng(5).standard_normal((2, 150, 2, 64)), jnp.float32)

  def run(fn, *a, **kw):
    f = lambda *a: fn(*a, scale=0.7, **kw).astype(cot.dtype)  # noqa: E731
    o, vjp = jax.vjp(f, *a)
    return o, vjp(cot.astype(o.dtype))
  o, grads = jax.jit(lambda *a: run(pk.loglinear_gdn_chunked, *a, chunk_size=64,
                                    interpret=True, config=MOSAIC))(*args)
  with jax.enable_x64(True):
    o_ref, refs = jax.jit(lambda *a: run(LL.recurrent, *a))(
        *(x.astype(jnp.float64) for x in args))
  assert_close(o, o_ref, rel=5e-3, name='output')
  for name, x, r in zip(('dq', 'dk', 'dv', 'dg', 'dbeta', 'dlam'), grads, refs):
    assert_close(x.astype(jnp.float32), r, rel=1e-2 if name in ('dq', 'dk', 'dv') else 2e-2,
                 name=name)


def test_mosaic_state_scan_lowers_for_cuda_at_8k():
  """At T = 8192, 16 heads x 128, bf16 (the benchmark's shape), the GDN forward and backward with
  the Mosaic GPU state scans lower for CUDA from CPU (Mosaic GPU's layout inference and checks run
  here): the aligned and packed kernels of the UT transform, the forward and backward scans, the
  output and its backward and chunk_bwd (with the initial and final state), each replacing one
  Triton kernel: no kernel is left on the Triton lowering."""
  B, T, G, H, K = 1, 8192, 1, 16, 128
  S = jax.ShapeDtypeStruct
  shapes = [S((B, T, G, K), jnp.bfloat16), S((B, T, G, K), jnp.bfloat16),
            S((B, T, H, K), jnp.bfloat16), S((B, T, H), jnp.float32), S((B, T, H), jnp.float32),
            S((B, H, K, K), jnp.float32), S((B, T), jnp.int32)]
  config = MOSAIC._replace(block_v=128)

  def loss(*a):
    o, s = pk.gdn_chunked(*a[:5], initial_state_BHKV=a[5], segment_ids_BT=a[6],
                          return_final_state=True, config=config)
    return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)
  dev = jax.sharding.AbstractDevice(device_kind='NVIDIA H100 80GB HBM3', platform='gpu',
                                    num_cores=132)
  with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=dev)):
    text = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)))).trace(*shapes).lower(
        lowering_platforms=('cuda',)).as_text()
  for kernel in ('ut_transform_mgpu', 'state_scan_mgpu', 'state_scan_bwd_mgpu', 'output_mgpu',
                 'output_bwd_mgpu', 'chunk_bwd_mgpu'):
    assert f'gdn_{kernel}' in text and f'gdn_packed_{kernel}' in text, kernel
  assert "__gpu$xla.gpu.triton" not in text     # 12 all on Triton before


def test_mosaic_backend_rejects_what_it_cannot_serve():
  data = lm.make_data(12, 1, 64, fam=GDN, K=64, V=64)
  kernel = functools.partial(pk.gdn_chunked, chunk_size=64, interpret=True)
  with pytest.raises(ValueError, match="backend='mosaic'.*dtype='float32'"):
    kernel(*args_of(data, GDN, jnp.float32), config=MOSAIC)
  bf16 = args_of(data, GDN, jnp.bfloat16)
  with pytest.raises(ValueError, match="block_v=8"):
    kernel(*bf16, config=MOSAIC._replace(block_v=8))
  with pytest.raises(ValueError, match="chunk_size=32"):
    kernel(*bf16, config=MOSAIC, chunk_size=32)
  with pytest.raises(ValueError, match="needs level_streams='gdn'"):   # the scans: Triton only
    pk.loglinear_gdn_chunked(*args_of(lm.make_data(12, 1, 64, fam=LL), LL, jnp.bfloat16),
                             config=MOSAIC, interpret=True, level_streams='scan')
  with pytest.raises(ValueError, match="level_streams='both'"):
    pk.loglinear_gdn_chunked(*args_of(lm.make_data(12, 1, 64, fam=LL), LL, jnp.bfloat16),
                             interpret=True, level_streams='both')
  mixed = bf16[:2] + (bf16[2].astype(jnp.float32),) + bf16[3:]
  with pytest.raises(ValueError, match=r"one dtype; got \['bfloat16', 'float32'\]"):
    kernel(*mixed, config=MOSAIC)


def test_auto_backend_keeps_mixed_dtypes_on_triton(monkeypatch):
  """On a Hopper GPU (stood in for, traced only) 'auto' runs GDN's AUTO_MOSAIC kernels on Mosaic
  GPU for q, k, v of one 16-bit dtype, and every kernel on Triton when v's dtype differs (the
  Mosaic kernels read q, k, v as tiles of one dtype)."""
  monkeypatch.setattr(chunkwise, "on_hopper_gpu", lambda: True)
  bf16 = args_of(lm.make_data(12, 1, 128, fam=GDN, K=64, V=64), GDN, jnp.bfloat16)
  mixed = bf16[:2] + (bf16[2].astype(jnp.float32),) + bf16[3:]
  loss = lambda *a: jnp.sum(pk.gdn_chunked(*a, chunk_size=64).astype(jnp.float32))  # noqa
  for args, mosaic in ((bf16, True), (mixed, False)):
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(*args))
    assert ("gdn_output_mgpu" in jaxpr) == mosaic and ("_mgpu" in jaxpr) == mosaic


def test_auto_backend_takes_mosaic_scans_only_where_they_serve_on_hopper(monkeypatch):
  """KernelConfig's default backend='auto' runs the state scans on Mosaic GPU on a Hopper GPU (stood
  in for here) for 16-bit inputs, chunks and K multiples of 64, outside interpret mode; Triton
  otherwise, and 'triton' / 'mosaic' are taken as given; 'mosaic' runs every kernel's Mosaic form
  where it serves the launch, 'auto' only those of chunkwise.AUTO_MOSAIC."""
  monkeypatch.setattr(chunkwise, "on_hopper_gpu", lambda: True)
  auto = pk.KernelConfig(block_v=64)   # backend 'auto', the default

  def on_mosaic(dtype=jnp.bfloat16, K=128, chunk_size=64, cfg=auto, interpret=False):
    q = jax.ShapeDtypeStruct((2, 256, 4, K), dtype)
    return chunkwise.on_mosaic(chunkwise.launch(q, 4, 128, None, chunk_size, cfg, interpret))

  assert on_mosaic() and on_mosaic(jnp.float16) and on_mosaic(cfg=MOSAIC)
  assert not on_mosaic(jnp.float32)
  assert not on_mosaic(K=32) and not on_mosaic(chunk_size=32)
  assert not on_mosaic(chunk_size=256)          # the backward's tiles exceed SMEM
  assert not on_mosaic(interpret=True)
  assert not on_mosaic(cfg=auto._replace(backend='triton'))
  monkeypatch.setattr(chunkwise, "on_hopper_gpu", lambda: False)
  assert not on_mosaic() and on_mosaic(cfg=MOSAIC)
  # 'auto' takes the Mosaic forms of chunkwise.AUTO_MOSAIC only; 'mosaic' every one that serves
  monkeypatch.setattr(chunkwise, "on_hopper_gpu", lambda: True)
  q = jax.ShapeDtypeStruct((2, 256, 4, 128), jnp.bfloat16)
  for cfg in (auto, MOSAIC):
    for V, C in ((128, 64), (256, 64), (128, 128)):
      L = chunkwise.launch(q, 4, V, None, C, cfg, False)
      for kernel in ('ut_transform', 'state_scan', 'output', 'output_bwd', 'state_scan_bwd',
                     'chunk_bwd'):
        narrower = ((kernel == 'ut_transform' and C != 64) or (kernel == 'output_bwd' and V > 128)
                    or (kernel == 'chunk_bwd' and (V, C) != (128, 64)))   # one chunk > SMEM
        want = not narrower and (cfg is MOSAIC or (kernel in chunkwise.AUTO_MOSAIC and C == 64))
        assert chunkwise.on_mosaic(L, kernel) == want, (cfg.backend, V, C, kernel)


# ------------------------------------------------------------------------------------------------
# GPU (docs/correctness.md#gpu-tests): bf16 inputs vs the fp32 XLA chunked form (precision HIGHEST)


def _gpu_inputs(B, T, G, H, K, V, seed=0):
  L = hierarchy.num_levels(T)
  ks = jax.random.split(jax.random.PRNGKey(seed), 7)
  norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  q = norm(jax.random.normal(ks[0], (B, T, G, K), jnp.float32)).astype(jnp.bfloat16)
  k = norm(jax.random.normal(ks[1], (B, T, G, K), jnp.float32)).astype(jnp.bfloat16)
  v = jax.random.normal(ks[2], (B, T, H, V), jnp.bfloat16)
  g = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, T, H), jnp.float32))
  beta = jax.nn.sigmoid(jax.random.normal(ks[4], (B, T, H), jnp.float32))
  lam = jax.nn.softplus(jax.random.normal(ks[5], (B, T, H, L), jnp.float32))
  cot = jax.random.normal(ks[6], (B, T, H, V), jnp.float32)
  return (q, k, v, g, beta, lam), cot


@pytest.mark.gpu
@pytest.mark.parametrize('B,T,G,H,D,fam,cu_seqlens', [
    (2, 1024, 1, 8, 128, LL, None), (2, 1024, 1, 8, 128, GDN, None),
    (1, 2000, 2, 8, 128, LL, [0, 15, 333, 2000]), (1, 2000, 2, 8, 128, GDN, [0, 15, 333, 2000]),
    (1, 8192, 1, 4, 64, LL, None), (1, 16384, 1, 4, 64, LL, None)],
    ids=['loglinear_gdn', 'gdn', 'loglinear_gdn_varlen', 'gdn_varlen', 'loglinear_gdn_8k',
         'loglinear_gdn_16k'])
def test_gpu_bf16_forward_and_gradients(B, T, G, H, D, fam, cu_seqlens):
  args, cot = _gpu_inputs(B, T, G, H, D, D)
  n = len(fam.arg_names)
  args = args[:n]
  seg = None if cu_seqlens is None else hierarchy.segment_ids_from_cu_seqlens(cu_seqlens, T)
  kw = dict(scale=D ** -0.5, segment_ids_BT=seg)
  kfn = functools.partial(kernel_of(fam), **kw)
  rfn = functools.partial(fam.chunked, **kw)
  names = ('dq', 'dk', 'dv', 'dg', 'dbeta', 'dlam')[:n]
  assert_bf16_kernel_matches_fp32(kfn, rfn, args, cot, names)


@pytest.mark.gpu
@pytest.mark.parametrize('B,T,cu_seqlens', [(2, 1024, None), (1, 2000, [0, 15, 333, 2000])],
                         ids=['aligned', 'varlen'])
def test_gpu_bf16_mosaic_state_scans(B, T, cu_seqlens):
  """GDN with every kernel on Mosaic GPU (KernelConfig(backend='mosaic'), block_v 64):
  bf16 output and gradients against the fp32 XLA form, as test_gpu_bf16_forward_and_gradients."""
  args, cot = _gpu_inputs(B, T, 1, 8, 128, 128)
  seg = None if cu_seqlens is None else hierarchy.segment_ids_from_cu_seqlens(cu_seqlens, T)
  kw = dict(scale=128 ** -0.5, segment_ids_BT=seg)
  config = pk.KernelConfig(block_v=64, num_warps=8, num_stages=1, backend='mosaic')
  assert_bf16_kernel_matches_fp32(functools.partial(pk.gdn_chunked, config=config, **kw),
                                  functools.partial(GDN.chunked, **kw), args[:5], cot,
                                  ('dq', 'dk', 'dv', 'dg', 'dbeta'))


@pytest.mark.gpu
@pytest.mark.parametrize('fam', [GDN, LL], ids=['gdn', 'loglinear_gdn'])
def test_gpu_bf16_states(fam):
  """A continuation at a GPU shape (the state after 512 tokens, then two packed documents and
  padding): initial and final state on bf16 inputs against the fp32 XLA form, values and gradients
  (docs/correctness.md#gpu-tests). Log-linear GDN at half the length: its fp32 XLA reference's
  gradient ran out of memory at 4096 beside the other GPU tests (pytest -n 4, one H200)."""
  check_bf16_states(fam, T=2048 if fam.lam else 4096, interpret=False)


def check_bf16_states(fam, T, interpret, T0=512):
  inputs, _ = _gpu_inputs(2, T0 + T, 1, 8, 128, 128)
  args = tuple(inputs[:5]) + ((inputs[5],) if fam.lam else ())
  _, state0 = jax.jit(functools.partial(fam.chunked, return_final_state=True))(
      *[x[:, :T0].astype(jnp.float32) for x in args])
  S0 = getattr(state0, 'S_BHLKV', state0)
  rng = np.random.default_rng(6)
  cot, cot_s = (jnp.asarray(rng.standard_normal(x), jnp.float32)
                for x in ((2, T, 8, 128), S0.shape))
  seg = jnp.asarray(np.repeat([[1] * (T // 4) + [2] * (T // 2) + [0] * (T // 4)], 2, 0))
  initial = _initial(fam, jnp.full((2,), T0, jnp.int32))
  loss = lambda fn, **kw: _loss_with_states(fn, seg, cot, cot_s, 128 ** -0.5,  # noqa: E731
                                            initial, **kw)
  args = tuple(x[:, T0:] for x in args) + (S0,)
  grad = lambda f: jax.jit(jax.value_and_grad(  # noqa: E731
      f, argnums=tuple(range(len(args))), has_aux=True))
  (_, (o, s)), got = grad(loss(kernel_of(fam), interpret=interpret))(*args)
  with jax.default_matmul_precision('highest'):
    (_, (o_ref, s_ref)), want = grad(loss(fam.chunked))(*[a.astype(jnp.float32) for a in args])
  assert_close(o.astype(jnp.float32), o_ref, rel=5e-3, name='output')
  assert_close(s, s_ref, rel=5e-3, name='final state')
  names = ('dq', 'dk', 'dv', 'dg', 'dbeta') + (('dlam',) if fam.lam else ()) + ('dS0',)
  for name, x, y in zip(names, got, want, strict=True):
    assert_close(x.astype(jnp.float32), y, rel=1e-2 if name in ('dq', 'dk', 'dv') else 2e-2,
                 name=name)
