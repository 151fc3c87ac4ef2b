"""Shared cases for the linear-mixer op tests (test_linear_mixers, test_loglinear, and the kernel
tests under tests/kernels).

Each op family (mamba2, gdn, loglinear_mamba2, loglinear_gdn: the mixer names) has the same four
forms and the same arguments, so every check here takes a `Family`. Inputs come from numpy (no
compile per shape); jitted functions are cached per (function, static arguments) so that tests
sharing shapes share compiles; the fp64 oracles at T = 300 are computed once per family.
Tolerances: docs/correctness.md#cpu-tests (fp32 ops vs fp64 oracles).
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lloglin.ops import gdn, hierarchy, loglinear, mamba2
from tests.ops.helpers import assert_close

LEVELS = 10                      # serves T <= 512
T_REF = 300                      # length of the cached oracles (crosses 256)
FWD = dict(rel=1e-5)             # fp32 forward vs fp64 oracle
EXACT = dict(rel=1e-12)          # fp64 vs fp64


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  recurrent: Callable
  quadratic: Callable
  chunked: Callable
  step: Callable
  beta: bool
  lam: bool

  @property
  def arg_names(self):
    return ('q', 'k', 'v', 'g') + (('beta',) if self.beta else ()) + (('lam',) if self.lam else ())

  @property
  def state_kw(self):
    return 'initial_state' if self.lam else 'initial_state_BHKV'

  def args(self, data, dtype, t_slice=slice(None)):
    return tuple(jnp.asarray(data[n][:, t_slice], dtype) for n in self.arg_names)

  def empty_state(self, B, H, K, V, dtype=jnp.float32):
    if self.lam:
      return hierarchy.fenwick_zeros(B, H, LEVELS, K, V, dtype)
    return jnp.zeros((B, H, K, V), dtype)


FAMILIES = {
    'mamba2': Family('mamba2', mamba2.ssd_recurrent, mamba2.ssd_quadratic, mamba2.ssd_chunked,
                     mamba2.ssd_step, beta=False, lam=False),
    'gdn': Family('gdn', gdn.gdn_recurrent, gdn.gdn_quadratic, gdn.gdn_chunked, gdn.gdn_step,
                  beta=True, lam=False),
    'loglinear_mamba2': Family('loglinear_mamba2', loglinear.loglinear_ssd_recurrent,
                               loglinear.loglinear_ssd_quadratic, loglinear.loglinear_ssd_chunked,
                               loglinear.loglinear_ssd_step, beta=False, lam=True),
    'loglinear_gdn': Family('loglinear_gdn', loglinear.loglinear_gdn_recurrent,
                            loglinear.loglinear_gdn_quadratic, loglinear.loglinear_gdn_chunked,
                            loglinear.loglinear_gdn_step, beta=True, lam=True),
}
BASE = {'loglinear_mamba2': 'mamba2', 'loglinear_gdn': 'gdn'}


def make_data(seed, B, T, *, fam, G=1, H=2, K=16, V=16, L=LEVELS, tau=None, beta_scale=1.0,
              lam='randn', g_zero_frac=0.0):
  """float64 numpy inputs (docs/correctness.md#cpu-tests). GDN families: q/k L2-normalised,
  g = logsigmoid(N(0,1)) / tau (tau = 1 by default). Mamba-2 families: the Mamba-2
  parameterisation (dt = softplus(N(0,1) - 4), A = -exp(U(0,1)), g = dt A, v = dt x) unless tau
  is given, then g = logsigmoid(N(0,1)) / tau."""
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((B, T, G, K))
  k = rng.standard_normal((B, T, G, K))
  v = rng.standard_normal((B, T, H, V))
  if fam.beta:
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
  if fam.beta or tau is not None:
    g = -np.logaddexp(0.0, -rng.standard_normal((B, T, H))) / (tau or 1.0)   # logsigmoid / tau
  else:
    dt = np.logaddexp(0.0, rng.standard_normal((B, T, H)) - 4.0)
    g = -dt * np.exp(rng.uniform(0.0, 1.0, (1, 1, H)))
    v *= dt[..., None]
  if g_zero_frac:
    g = np.where(rng.uniform(size=g.shape) < g_zero_frac, 0.0, g)
  beta = rng.uniform(0.0, 1.0, (B, T, H)) * beta_scale
  if lam == 'randn':
    lam_ = rng.standard_normal((B, T, H, L))
  elif lam == 'softplus':
    lam_ = np.logaddexp(0.0, rng.standard_normal((B, T, H, L)))
  else:
    lam_ = np.ones((B, T, H, L))
  return dict(q=q, k=k, v=v, g=g, beta=beta, lam=lam_)


@functools.cache
def jitted(fn, **static):
  return jax.jit(functools.partial(fn, **static))


@functools.cache
def reference(fam_name):
  """(data, recurrent, quadratic) at T = T_REF, B = 2, float64."""
  fam = FAMILIES[fam_name]
  data = make_data(0, 2, T_REF, fam=fam)
  with jax.enable_x64(True):
    args = fam.args(data, jnp.float64)
    return data, np.asarray(jitted(fam.recurrent)(*args)), np.asarray(jitted(fam.quadratic)(*args))


def fwd_tol(ref):
  return dict(rel=1e-5, maxabs=1e-5 * max(1.0, float(np.max(np.abs(ref)))))


def assert_close_per_position(out_BT, ref_BT, *, rel, name=''):
  """assert_close at every time step (axis 1) separately."""
  out = np.asarray(out_BT, np.float64)
  ref = np.asarray(ref_BT, np.float64)
  assert out.shape == ref.shape and np.all(np.isfinite(out)), name
  for t in range(out.shape[1]):
    assert_close(out[:, t], ref[:, t], rel=rel, name=f'{name} t={t}')


# ------------------------------------------------------------------------------------------------
# Checks


def check_oracles_agree(fam):
  _, rec, quad = reference(fam.name)
  assert_close(quad, rec, **EXACT, name='quadratic vs recurrent')


def check_chunked_vs_oracle(fam, T, C):
  data, rec, _ = reference(fam.name)
  with jax.enable_x64(True):
    out = jitted(fam.chunked, chunk_size=C)(*fam.args(data, jnp.float32, slice(0, T)))
  assert out.dtype == jnp.float32
  assert_close(out, rec[:, :T], **fwd_tol(rec[:, :T]), name=f'chunked T={T} C={C}')


def check_chunk_invariance_fp64(fam, T=200):
  """fp64 chunked for C = 16/32/64 equals the fp64 oracle (outputs and final state) to 1e-12."""
  data = make_data(1, 2, T, fam=fam)
  with jax.enable_x64(True):
    args = fam.args(data, jnp.float64)
    o_ref, s_ref = jitted(fam.recurrent, return_final_state=True)(*args)
    for C in (16, 32, 64):
      o, s = jitted(fam.chunked, chunk_size=C, return_final_state=True)(*args)
      assert_close(o, o_ref, **EXACT, name=f'C={C} output')
      if fam.lam:
        np.testing.assert_array_equal(s.t_B, s_ref.t_B)
        s, s_ref_ = s.S_BHLKV, s_ref.S_BHLKV
      else:
        s_ref_ = s_ref
      assert s.dtype == jnp.float64
      assert_close(s, s_ref_, **EXACT, name=f'C={C} final state')


def _decode_scan(fam):
  """jitted lax.scan of fam.step over the time axis of the token arguments."""
  def run(args, state):
    def body(state, token_args):
      o, state = fam.step(*token_args, state)
      return state, o
    state, o_TBHV = lax.scan(body, state, tuple(jnp.moveaxis(a, 1, 0) for a in args))
    return jnp.moveaxis(o_TBHV, 0, 1), state
  return run


@functools.cache
def decode_fn(fam_name):
  return jax.jit(_decode_scan(FAMILIES[fam_name]))


def check_decode_every_position(fam):
  """fp32 step-by-step decode from an empty state == the fp64 quadratic oracle at every t."""
  data, _, quad = reference(fam.name)
  with jax.enable_x64(True):
    args = fam.args(data, jnp.float32)
    B, _, H, V = args[2].shape
    o, state = decode_fn(fam.name)(args, fam.empty_state(B, H, args[0].shape[-1], V))
  assert o.dtype == jnp.float32
  assert_close_per_position(o, quad, rel=1e-5, name='decode')
  if fam.lam:
    np.testing.assert_array_equal(state.t_B, [T_REF] * B)


def check_prefill_then_decode(fam, T0, C=64, steps=50):
  """Chunked prefill of T0 tokens, then (a) 50 decode steps and (b) a chunked continuation from
  the returned state, both equal to the full forward (fla PR #1176)."""
  data, rec, _ = reference(fam.name)
  with jax.enable_x64(True):
    prefix = fam.args(data, jnp.float32, slice(0, T0))
    rest = fam.args(data, jnp.float32, slice(T0, T0 + steps))
    o_pre, state = jitted(fam.chunked, chunk_size=C, return_final_state=True)(*prefix)
    o_dec, _ = decode_fn(fam.name)(rest, state)
    o_cont = jitted(fam.chunked, chunk_size=C)(*rest, **{fam.state_kw: state})
  assert_close(o_pre, rec[:, :T0], **fwd_tol(rec[:, :T0]), name='prefill')
  assert_close_per_position(o_dec, rec[:, T0:T0 + steps], rel=1e-5, name='decode')
  assert_close(o_cont, rec[:, T0:T0 + steps], **fwd_tol(rec[:, T0:T0 + steps]),
               name='chunked continuation')
  if fam.lam:
    np.testing.assert_array_equal(state.t_B, [T0, T0])


PACKED_T = 96
PACKED_ROWS = (
    [(1, 1), (2, 15), (0, 3), (3, 40), (4, 20), (0, 17)],
    [(0, 2), (1, 40), (2, 15), (3, 1), (4, 38)],
    [(1, 64), (2, 32)],
)


def packed_segment_ids():
  seg = np.zeros((len(PACKED_ROWS), PACKED_T), np.int32)
  for b, row in enumerate(PACKED_ROWS):
    seg[b] = np.concatenate([np.full(n, d, np.int32) for d, n in row])
  return seg


def poison_padding(data, seg):
  """NaN at padding tokens (segment id 0) in every input."""
  pad = seg == 0
  return {n: np.where(pad.reshape(pad.shape + (1,) * (x.ndim - 2)), np.nan, x)
          for n, x in data.items()}


def check_packed_equals_separate(fam, C=16):
  """Packed rows (incl. documents of 1 and 15 tokens, padding between and after, NaN-poisoned)
  == every document run alone from the start of its own row; padding outputs 0; the final state
  is the state after the last document of the row."""
  seg = packed_segment_ids()
  B, T = seg.shape
  data = make_data(2, B, T, fam=fam)
  poisoned = poison_padding(data, seg)
  docs = [(b, np.flatnonzero(seg[b] == d)) for b in range(B) for d in np.unique(seg[b]) if d]
  with jax.enable_x64(True):
    seg_j = jnp.asarray(seg)
    o, state = jitted(fam.chunked, chunk_size=C, return_final_state=True)(
        *fam.args(poisoned, jnp.float32), segment_ids_BT=seg_j)
    rec = jitted(fam.recurrent, return_final_state=True)          # one compile for all calls
    o_rec, _ = rec(*fam.args(poisoned, jnp.float64), segment_ids_BT=seg_j)
    o_quad = jitted(fam.quadratic)(*fam.args(poisoned, jnp.float64), segment_ids_BT=seg_j)
    # Separate documents: each at the start of its own row (batches of B rows, same shapes).
    ref = np.zeros(o.shape)
    final_ref = {}
    for i in range(0, len(docs), B):
      group = docs[i:i + B]
      sep = {n: np.zeros_like(x) for n, x in data.items()}
      sep_seg = np.zeros_like(seg)
      for r, (b, idx) in enumerate(group):
        for n in sep:
          sep[n][r, :len(idx)] = data[n][b, idx]
        sep_seg[r, :len(idx)] = 1
      o_sep, s_sep = rec(*fam.args(sep, jnp.float64), segment_ids_BT=jnp.asarray(sep_seg))
      for r, (b, idx) in enumerate(group):
        ref[b, idx] = np.asarray(o_sep[r, :len(idx)])
        if idx[-1] == np.flatnonzero(seg[b])[-1]:           # last document of row b
          final_ref[b] = (jax.tree.map(lambda x: np.asarray(x[r]), s_sep), len(idx))
  assert_close(o_rec, ref, **EXACT, name='packed recurrent vs separate')
  assert_close(o_quad, ref, **EXACT, name='packed quadratic vs separate')
  assert_close(o, ref, **fwd_tol(ref), name='packed chunked vs separate')
  assert np.all(np.asarray(o)[seg == 0] == 0)
  for b, (s_ref, n) in final_ref.items():
    if fam.lam:
      assert int(state.t_B[b]) == n
      assert_close(state.S_BHLKV[b], s_ref.S_BHLKV, **FWD, name=f'final state row {b}')
    else:
      assert_close(state[b], s_ref, **FWD, name=f'final state row {b}')


def packed_continuation(fam, data):
  """(segment ids, state after tokens 0-36, tokens 37-59) of 3 rows: the first document of each
  row continues the state, a later one starts empty, a row starts with padding, one ends with it.
  fp64: call under jax.enable_x64."""
  seg = np.ones((3, 23), np.int32)
  seg[0, 10:] = 2
  seg[1, :3] = 0
  seg[2, 20:] = 0
  _, state = jitted(fam.recurrent, return_final_state=True)(
      *fam.args(data, jnp.float64, slice(0, 37)))
  return jnp.asarray(seg), state, fam.args(data, jnp.float64, slice(37, 60))


def check_initial_state_with_packed_documents(fam, C=8):
  """An initial state continues the document at t = 0 only; later documents (and a row that
  starts with padding) start empty. fp64: chunked == recurrent == quadratic, final states too."""
  data = make_data(11, 3, 60, fam=fam)
  with jax.enable_x64(True):
    seg_j, state, rest = packed_continuation(fam, data)
    kw = {fam.state_kw: state, 'segment_ids_BT': seg_j}
    o_rec, s_rec = jitted(fam.recurrent, return_final_state=True)(*rest, **kw)
    o_ch, s_ch = jitted(fam.chunked, chunk_size=C, return_final_state=True)(*rest, **kw)
    o_quad = jitted(fam.quadratic)(*rest, **kw)
    full = jitted(fam.recurrent)(*fam.args(data, jnp.float64, slice(0, 47)))
  assert_close(o_rec[0, :10], full[0, 37:47], **EXACT, name='document 0 continues the state')
  assert_close(o_ch, o_rec, **EXACT, name='chunked')
  assert_close(o_quad, o_rec, **EXACT, name='quadratic')
  for a, b in zip(jax.tree.leaves(s_ch), jax.tree.leaves(s_rec)):
    assert_close(a, b, **EXACT, name='final state')


@functools.cache
def vjp_fn(fn, **static):
  """jitted (outputs, grads of sum(outputs * w) w.r.t. every argument)."""
  def run(args, w, seg):
    kw = dict(static) if seg is None else dict(static, segment_ids_BT=seg)
    out, pullback = jax.vjp(lambda *a: fn(*a, **kw), *args)
    return out, pullback(w.astype(out.dtype))
  return jax.jit(run)


GRAD_TOL = dict(q=1e-4, k=1e-4, v=1e-4, g=5e-4, beta=5e-4, lam=5e-4)


def check_gradients(fam, *, packed, tau=None, beta_scale=1.0, g_zero_frac=0.0, C=16):
  """Outputs and jax.grad of the fp32 chunked form == those of the fp64 recurrent oracle (dense:
  T = 100, a partial last chunk; packed: NaN-poisoned padding gets finite, zero gradients)."""
  if packed:
    seg = packed_segment_ids()
    B, T = seg.shape
  else:
    seg, B, T = None, 2, 100
  data = make_data(3, B, T, fam=fam, tau=tau, beta_scale=beta_scale, g_zero_frac=g_zero_frac)
  w = np.random.default_rng(4).standard_normal((B, T, 2, 16))
  if packed:
    data = poison_padding(data, seg)
  with jax.enable_x64(True):
    seg_j = None if seg is None else jnp.asarray(seg)
    o32, d32 = vjp_fn(fam.chunked, chunk_size=C)(fam.args(data, jnp.float32), jnp.asarray(w),
                                                  seg_j)
    o64, d64 = vjp_fn(fam.recurrent)(fam.args(data, jnp.float64), jnp.asarray(w), seg_j)
  assert_close(o32, o64, **fwd_tol(o64), name='output')
  for name, a, b in zip(fam.arg_names, d32, d64):
    tol = GRAD_TOL[name] * (2 if beta_scale > 1 and name in ('g', 'beta', 'lam') else 1)
    assert np.all(np.isfinite(np.asarray(a))), f'd{name} not finite'
    if packed:
      assert np.all(np.asarray(a)[seg == 0] == 0), f'd{name} nonzero at padding'
    assert_close(a, b, rel=tol, name=f'd{name}')


def check_gqa(fam, C=32, T=50):
  """q/k groups: head h reads group h // (H / G); compared with explicitly repeated q/k."""
  G, H = 2, 4
  data = make_data(5, 2, T, fam=fam, G=G, H=H)
  expanded = dict(data, q=np.repeat(data['q'], H // G, axis=2), k=np.repeat(data['k'], H // G,
                                                                            axis=2))
  with jax.enable_x64(True):
    out = jitted(fam.chunked, chunk_size=C, scale=0.5)(*fam.args(data, jnp.float32))
    ref = jitted(fam.recurrent, scale=0.5)(*fam.args(expanded, jnp.float64))
  assert_close(out, ref, **fwd_tol(ref), name='grouped chunked vs expanded oracle')


def check_bf16(fam, T=64, C=16):
  """bf16 inputs: bf16 output, fp32 final state, close to the fp64 oracle."""
  data = make_data(6, 2, T, fam=fam)
  with jax.enable_x64(True):
    out, state = jitted(fam.chunked, chunk_size=C, return_final_state=True)(
        *fam.args(data, jnp.bfloat16))
    ref = jitted(fam.recurrent)(*fam.args(data, jnp.float64))
  assert out.dtype == jnp.bfloat16
  assert (state.S_BHLKV if fam.lam else state).dtype == jnp.float32
  assert_close(out, ref, rel=3e-2, name='bf16')


def check_bad_inputs(fam):
  """Shape / group / chunk-size errors name the argument and the expected shape."""
  data = make_data(7, 2, 16, fam=fam)
  args = fam.args(data, jnp.float32)
  names = [f'{n}_' + axes for n, axes in zip(
      fam.arg_names, ('BTGK', 'BTGK', 'BTHV', 'BTH') + (('BTH',) if fam.beta else ())
      + (('BTHL',) if fam.lam else ()))]

  def replaced(i, x):
    return args[:i] + (x,) + args[i + 1:]

  with pytest.raises(ValueError, match=r'k_BTGK.*K=16'):
    fam.chunked(*replaced(1, args[1][..., :8]))
  with pytest.raises(ValueError, match=r'v_BTHV.*T=16'):
    fam.recurrent(*replaced(2, args[2][:, :8]))
  with pytest.raises(ValueError, match=r'g_BTH.*H=2'):
    fam.quadratic(*replaced(3, args[3][..., :1]))
  for i, name in enumerate(names[3:], start=3):
    with pytest.raises(ValueError, match=name):
      fam.chunked(*replaced(i, args[i][:, :, None]))
  grouped = fam.args(make_data(7, 2, 16, fam=fam, G=2, H=3), jnp.float32)
  with pytest.raises(ValueError, match=r'v_BTHV.*multiple.*G=2'):
    fam.chunked(*grouped)
  for bad in (48, 0, -16, 16.0):
    with pytest.raises(ValueError, match='chunk_size'):
      fam.chunked(*args, chunk_size=bad)
  with pytest.raises(ValueError, match='segment_ids_BT'):
    fam.chunked(*args, segment_ids_BT=jnp.ones((2, 15), jnp.int32))
  bad_state = fam.empty_state(2, 3, 16, 16)
  with pytest.raises(ValueError, match='initial_state'):
    fam.chunked(*args, **{fam.state_kw: bad_state})
  step_args = tuple(a[:, 0] for a in args)
  with pytest.raises(ValueError, match=r'v_BHV'):
    fam.step(*step_args[:2], step_args[2][..., :3], *step_args[3:], fam.empty_state(2, 2, 16, 16))
  with pytest.raises(ValueError, match=r'state'):
    fam.step(*step_args, fam.empty_state(2, 2, 16, 8))

