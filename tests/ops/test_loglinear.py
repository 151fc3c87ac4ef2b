"""lloglin.ops.loglinear: what only the log-linear Mamba-2 / GDN have (docs/algorithms/loglinear.md,
docs/correctness.md#structural-cases).

The chain they share with Mamba-2 and GDN (recurrent == quadratic == chunked == decode, packing,
gradients, GQA, bf16, bad shapes) runs in test_linear_mixers.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import checks, hierarchy
from tests.ops import linear_mixers as lm
from tests.ops.helpers import assert_close


@pytest.fixture(params=list(lm.BASE))
def fam(request):
  return lm.FAMILIES[request.param]


def test_lam_ones_reduces_to_base(fam):
  base = lm.FAMILIES[lm.BASE[fam.name]]
  data = dict(lm.reference(fam.name)[0])
  data['lam'] = np.ones_like(data['lam'])
  with jax.enable_x64(True):
    rec = lm.jitted(fam.recurrent)(*fam.args(data, jnp.float64))
    rec_base = lm.jitted(base.recurrent)(*base.args(data, jnp.float64))
    out = lm.jitted(fam.chunked, chunk_size=16)(*fam.args(data, jnp.float32, slice(0, 200)))
    out_base = lm.jitted(base.chunked, chunk_size=16)(*base.args(data, jnp.float32,
                                                                 slice(0, 200)))
  assert_close(rec, rec_base, **lm.EXACT, name='recurrent')
  assert_close(out, out_base, **lm.FWD, name='chunked')


def test_each_level_isolated(fam):
  """lam one-hot on a single level: chunked == quadratic oracle level by level."""
  data = dict(lm.reference(fam.name)[0])
  for level in range(hierarchy.num_levels(200)):
    data['lam'] = np.zeros_like(data['lam'])
    data['lam'][..., level] = 1.0
    with jax.enable_x64(True):
      ref = np.asarray(lm.jitted(fam.quadratic)(*fam.args(data, jnp.float64)))[:, :200]
      out = lm.jitted(fam.chunked, chunk_size=16)(*fam.args(data, jnp.float32, slice(0, 200)))
    assert np.abs(ref).max() > 1e-3, level
    assert_close(out, ref, **lm.fwd_tol(ref), name=f'level {level}')


@pytest.mark.parametrize('T0', [63, 64, 130])
def test_prefill_then_decode_across_fenwick_carries(fam, T0):
  """States handed over just before, at and past a power of two (the chain runs T0 = 1, 70)."""
  lm.check_prefill_then_decode(fam, T0)


def test_too_few_levels(fam):
  """lam_BTHL with fewer levels than T needs: ValueError naming it, T and the levels needed."""
  data = lm.make_data(8, 2, 17, fam=fam, L=5)                # T = 17 needs 6 levels
  with pytest.raises(ValueError, match=r'lam_BTHL.*T=17.*L >= 6.*L=5'):
    fam.chunked(*fam.args(data, jnp.float32))
  with pytest.raises(ValueError, match='lam_BTHL'):
    fam.recurrent(*fam.args(data, jnp.float32))


def test_positions_beyond_the_levels_give_nan():
  """Dynamic positions (packed documents, initial states) >= 2^(L-1) cannot raise inside jit:
  their outputs and the states after them are NaN; earlier positions are unaffected."""
  fam = lm.FAMILIES['loglinear_mamba2']
  data = lm.make_data(9, 2, 10, fam=fam, L=3)              # 3 levels serve positions 0..3
  seg = np.asarray([[1] * 4 + [2] * 4 + [0] * 2, [1] * 6 + [2] * 4], np.int32)
  bad = np.zeros((2, 10), bool)
  bad[1, 4:6] = True
  args = fam.args(data, jnp.float32)
  for fn in (fam.chunked, fam.recurrent, fam.quadratic):
    out = np.asarray(lm.jitted(fn)(*args, segment_ids_BT=jnp.asarray(seg)))
    assert np.all(np.isnan(out[bad])) and np.all(np.isfinite(out[~bad])), fn.__name__
  state = hierarchy.FenwickState(jnp.zeros((2, 2, 3, 16, 16)), jnp.asarray([3, 4], jnp.int32))
  o, state = fam.step(*(a[:, 0] for a in args), state)
  assert np.all(np.isfinite(o[0])) and np.all(np.isnan(o[1]))
  assert np.all(np.isfinite(state.S_BHLKV[0])) and np.all(np.isnan(state.S_BHLKV[1]))


def test_check_finite():
  g = np.zeros((2, 8, 2))
  checks.check_finite(g_BTH=g)
  g[1, 3, 0] = np.nan
  with pytest.raises(ValueError, match=r'g_BTH.*finite.*\(1, 3, 0\)'):
    checks.check_finite(g_BTH=g, lam_BTHL=np.ones((2, 8, 2, 4)))
  from jax.experimental import checkify
  checked = jax.jit(checkify.checkify(lambda g: (checks.check_finite(g_BTH=g), g)[1]))
  err, _ = checked(jnp.asarray(g))
  with pytest.raises(Exception, match='g_BTH'):
    err.throw()


@pytest.mark.parametrize('name', ['mamba2', 'loglinear_mamba2'])
def test_state_terms_complete_a_run_from_an_empty_state(name):
  """What the Pallas kernels rely on: a run from an empty state (log-linear: at the positions the
  initial state continues) plus *_state_terms == the chunked form with the initial state and its
  final state, over packed documents (lm.packed_continuation). fp64."""
  from lloglin.ops import loglinear, mamba2
  fam = lm.FAMILIES[name]
  terms = loglinear.loglinear_ssd_state_terms if fam.lam else mamba2.ssd_state_terms
  data = lm.make_data(12, 3, 60, fam=fam, lam='softplus')
  with jax.enable_x64(True):
    seg_j, state, rest = lm.packed_continuation(fam, data)
    kw = {fam.state_kw: state, 'segment_ids_BT': seg_j, 'scale': 0.7}
    o_ref, s_ref = lm.jitted(fam.chunked, chunk_size=8, return_final_state=True)(*rest, **kw)
    empty = (hierarchy.FenwickState(jnp.zeros_like(state.S_BHLKV), state.t_B) if fam.lam
             else None)
    o_empty = lm.jitted(fam.chunked, chunk_size=8)(*rest, **{**kw, fam.state_kw: empty})
    o, s = jax.jit(lambda o, *a: terms(o, *a, **kw, return_final_state=True))(o_empty, *rest)
    o_only = jax.jit(lambda o, *a: terms(o, *a, **kw))(o_empty, *rest)
  assert np.abs(np.asarray(o_ref) - np.asarray(o_empty)).max() > 1e-3   # the state matters
  assert_close(o, o_ref, **lm.EXACT, name='output')
  assert_close(o_only, o_ref, **lm.EXACT, name='output without the final state')
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s_ref)):
    assert_close(a, b, **lm.EXACT, name='final state')
