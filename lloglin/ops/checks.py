"""Argument validation shared by the mixer ops.

Shapes are checked statically (at trace time) from the axis letters in the argument names:
`check_shapes(q_BTGK=q, v_BTHV=v)` binds B, T, G, K, H, V and raises a ValueError naming the
argument, the expected shape and the shape received. Values cannot be checked inside `jit`;
`check_finite` raises on concrete arrays and uses `checkify.check` on traced ones (wrap the
caller in `jax.experimental.checkify.checkify` to get the error out of a jitted function).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from lloglin.ops.hierarchy import num_levels


def check_shapes(*, _bound=None, **arrays):
  """Binds the axis letters of each `name_AXES` argument; returns {letter: size}. None skipped.

  `_bound` ({letter: (size, source name)}) pre-binds letters, e.g. from an earlier check.
  """
  bound = dict(_bound or {})
  for name, x in arrays.items():
    if x is None:
      continue
    axes = name.rsplit('_', 1)[-1]
    shape = tuple(np.shape(x))
    expected = ', '.join(f'{a}={bound[a][0]}' if a in bound else a for a in axes)
    if len(shape) != len(axes):
      raise ValueError(f'{name}: expected {len(axes)} axes ({expected}), got shape {shape}')
    for a, n in zip(axes, shape):
      if a in bound and bound[a][0] != n:
        raise ValueError(
            f'{name}: expected shape ({expected}) with {a}={bound[a][0]} as in {bound[a][1]}, '
            f'got shape {shape}')
    for a, n in zip(axes, shape):
      bound.setdefault(a, (n, name))
  return {a: n for a, (n, _) in bound.items()}, bound


def check_floating(**arrays):
  for name, x in arrays.items():
    if x is not None and not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise TypeError(f'{name}: expected a floating-point array, got dtype {jnp.result_type(x)}')


def check_groups(dims, q_name='q_BTGK', v_name='v_BTHV'):
  G, H = dims['G'], dims['H']
  if G < 1 or H % G:
    raise ValueError(
        f'{v_name}: the number of heads H={H} must be a multiple of the number of q/k groups '
        f'G={G} of {q_name}')


def check_chunk_size(chunk_size):
  if (not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool)
      or chunk_size < 1 or chunk_size & (chunk_size - 1)):
    raise ValueError(f'chunk_size: expected a positive power of two, got {chunk_size!r}')


def check_segment_ids(segment_ids_BT):
  if segment_ids_BT is not None and not jnp.issubdtype(jnp.result_type(segment_ids_BT),
                                                       jnp.integer):
    raise TypeError(f'segment_ids_BT: expected an integer array, got dtype '
                    f'{jnp.result_type(segment_ids_BT)}')


def check_levels(seq_len, levels, lam_name='lam_BTHL'):
  """A document of seq_len tokens needs ceil(log2 seq_len) + 1 levels."""
  need = num_levels(seq_len)
  if levels < need:
    raise ValueError(
        f'{lam_name}: a sequence of T={seq_len} tokens needs L >= {need} levels '
        f'(ceil(log2 T) + 1), got L={levels}')


def check_finite(**arrays):
  """Raises ValueError naming the first argument with NaN or inf values.

  On traced arrays (inside jit) this emits `checkify.check`s instead: call the jitted function
  through `checkify.checkify(fn)` and `err.throw()` to surface them.
  """
  for name, x in arrays.items():
    if x is None:
      continue
    if isinstance(x, jax.core.Tracer):
      checkify.check(jnp.all(jnp.isfinite(x)), f'{name}: expected finite values (shape '
                     f'{tuple(x.shape)}), got NaN or inf')
      continue
    bad = ~np.asarray(jnp.isfinite(x))
    if bad.any():
      first = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f'{name}: expected finite values (shape {bad.shape}), got {int(bad.sum())} '
                       f'non-finite entries, the first at index {first}')


def check_mixer_args(*, q_BTGK, k_BTGK, v_BTHV, g_BTH, beta_BTH=None, lam_BTHL=None,
                     segment_ids_BT=None, initial_state_BHKV=None, initial_state=None,
                     chunk_size=None):
  """Validates the full-sequence arguments shared by mamba2/gdn/loglinear; returns the axis sizes.

  `initial_state` is a log-linear FenwickState (S_BHLKV, t_B); `initial_state_BHKV` the plain state.
  """
  dims, bound = check_shapes(
      q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH, beta_BTH=beta_BTH,
      lam_BTHL=lam_BTHL, segment_ids_BT=segment_ids_BT, initial_state_BHKV=initial_state_BHKV)
  check_floating(q_BTGK=q_BTGK, k_BTGK=k_BTGK, v_BTHV=v_BTHV, g_BTH=g_BTH, beta_BTH=beta_BTH,
                 lam_BTHL=lam_BTHL)
  check_groups(dims)
  check_segment_ids(segment_ids_BT)
  if chunk_size is not None:
    check_chunk_size(chunk_size)
  if initial_state is not None:
    _check_fenwick_state(initial_state, bound, 'initial_state')
  if lam_BTHL is not None and segment_ids_BT is None:
    check_levels(dims['T'], dims['L'])
  return dims


def check_step_args(*, q_BGK, k_BGK, v_BHV, g_BH, beta_BH=None, lam_BHL=None, state_BHKV=None,
                    state=None):
  """Validates one decode step's arguments (no time axis); returns the axis sizes."""
  dims, bound = check_shapes(q_BGK=q_BGK, k_BGK=k_BGK, v_BHV=v_BHV, g_BH=g_BH,
                             beta_BH=beta_BH, lam_BHL=lam_BHL, state_BHKV=state_BHKV)
  check_floating(q_BGK=q_BGK, k_BGK=k_BGK, v_BHV=v_BHV, g_BH=g_BH, beta_BH=beta_BH,
                 lam_BHL=lam_BHL)
  check_groups(dims, 'q_BGK', 'v_BHV')
  if state is not None:
    _check_fenwick_state(state, bound, 'state')
  return dims


def _check_fenwick_state(state, bound, name):
  if not (hasattr(state, 'S_BHLKV') and hasattr(state, 't_B')):
    raise TypeError(f'{name}: expected a FenwickState(S_BHLKV, t_B), got {type(state).__name__}')
  check_shapes(_bound=bound, **{f'{name}.S_BHLKV': state.S_BHLKV, f'{name}.t_B': state.t_B})
  if not jnp.issubdtype(jnp.result_type(state.t_B), jnp.integer):
    raise TypeError(f'{name}.t_B: expected an integer array, got dtype '
                    f'{jnp.result_type(state.t_B)}')
