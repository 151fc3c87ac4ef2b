"""Causal (and bidirectional) softmax attention: reference vs brute force, jax.nn path, decode
step, RoPE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import attention
from tests.ops.helpers import assert_close


def make_qkv(seed, B, T, H, G, K, V):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(B, T, H, K)), rng.normal(size=(B, T, G, K)),
          rng.normal(size=(B, T, G, V)))


def brute_force(q, k, v, seg, scale, causal=True):
  """Loop over batch, head and query position in numpy float64."""
  B, T, H, _ = q.shape
  R = H // k.shape[2]
  out = np.zeros(q.shape[:3] + v.shape[-1:])
  for b in range(B):
    for h in range(H):
      for t in range(T):
        if seg is not None and seg[b, t] == 0:
          continue
        keys = [s for s in range(t + 1 if causal else q.shape[1])
                if seg is None or seg[b, s] == seg[b, t]]
        logits = np.array([scale * q[b, t, h] @ k[b, s, h // R] for s in keys])
        p = np.exp(logits - logits.max())
        out[b, t, h] = (p / p.sum()) @ v[b, keys, h // R]
  return out


SEG = np.array([[1, 1, 1, 2, 2, 2, 2, 3, 0, 0, 0], [1] * 11], np.int32)


@pytest.mark.parametrize("segments, causal", [(False, True), (True, True), (True, False)])
def test_reference_equals_brute_force(segments, causal):
  q, k, v = make_qkv(0, 2, 11, 4, 2, 8, 6)
  seg = SEG if segments else None
  with jax.enable_x64(True):
    out = attention.causal_attention_reference(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=0.4, causal=causal,
        segment_ids_BT=None if seg is None else jnp.asarray(seg))
  assert_close(np.asarray(out), brute_force(q, k, v, seg, 0.4, causal), rel=1e-12, maxabs=1e-12)


@pytest.mark.parametrize("H, G, K, V", [(4, 4, 16, 16), (4, 2, 16, 8), (4, 1, 8, 16)])
@pytest.mark.parametrize("segments, causal", [(False, True), (True, True), (False, False),
                                              (True, False)])
def test_causal_attention_xla_equals_reference(H, G, K, V, segments, causal):
  B, T = 2, 40
  q, k, v = make_qkv(1, B, T, H, G, K, V)
  seg = None
  if segments:
    seg = np.zeros((B, T), np.int32)
    seg[0, :33] = np.repeat([1, 2, 3], [1, 15, 17])
    seg[1] = np.repeat([1, 2], [25, 15])
  with jax.enable_x64(True):
    ref = np.asarray(attention.causal_attention_reference(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=causal,
        segment_ids_BT=None if seg is None else jnp.asarray(seg)))
  out = attention.causal_attention(
      *(jnp.asarray(a, jnp.float32) for a in (q, k, v)), implementation="xla", causal=causal,
      segment_ids_BT=None if seg is None else jnp.asarray(seg))
  assert out.dtype == jnp.float32
  assert_close(np.asarray(out), ref, rel=1e-5)


def test_nan_padding_reaches_neither_outputs_nor_gradients():
  q, k, v = make_qkv(2, 2, 11, 4, 2, 8, 8)
  for a in (q, k, v):
    a[SEG == 0] = np.nan
  seg = jnp.asarray(SEG)
  xs = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
  for fn in (attention.causal_attention, attention.causal_attention_reference):
    out = fn(*xs, segment_ids_BT=seg)
    assert np.all(np.isfinite(out)) and np.all(np.asarray(out)[SEG == 0] == 0)
    loss = lambda *a, fn=fn: jnp.sum(fn(*a, segment_ids_BT=seg))
    grads = jax.jit(jax.grad(loss, (0, 1, 2)))(*xs)
    for g in grads:
      assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[SEG == 0] == 0)


def test_attention_step_equals_reference_rows():
  B, T, S, H, G, K, V = 2, 30, 48, 4, 2, 16, 8
  q, k, v = make_qkv(3, B, T, H, G, K, V)
  with jax.enable_x64(True):
    ref = np.asarray(attention.causal_attention_reference(*(jnp.asarray(a) for a in (q, k, v))))
  # Cache of capacity S holding the whole sequence plus garbage beyond it (must be masked).
  rng = np.random.default_rng(4)
  k_cache = np.concatenate([k, 1e3 * rng.normal(size=(B, S - T, G, K))], axis=1)
  v_cache = np.concatenate([v, rng.normal(size=(B, S - T, G, V))], axis=1)
  k_cache, v_cache = (jnp.asarray(a, jnp.float32) for a in (k_cache, v_cache))
  step = jax.jit(attention.attention_step)
  for t in [0, 1, 17, T - 1]:
    out = step(jnp.asarray(q[:, t], jnp.float32), k_cache, v_cache, jnp.full((B,), t + 1))
    assert_close(np.asarray(out), ref[:, t], rel=1e-5, name=f"t={t}")
  # Rows at different lengths in one call.
  lengths = jnp.asarray([5, 23])
  out = step(jnp.asarray(q[[0, 1], [4, 22]], jnp.float32), k_cache, v_cache, lengths)
  assert_close(np.asarray(out), ref[[0, 1], [4, 22]], rel=1e-5, name="ragged")
  empty = step(jnp.asarray(q[:, 0], jnp.float32), k_cache, v_cache, jnp.zeros((B,), jnp.int32))
  assert np.all(np.asarray(empty) == 0)


def test_rope_rotates_pairs_and_keeps_relative_positions():
  B, T, H, K = 2, 7, 3, 8
  rng = np.random.default_rng(5)
  x = rng.normal(size=(B, T, H, K))
  pos = rng.integers(0, 1000, size=(B, T))
  with jax.enable_x64(True):
    out = np.asarray(attention.apply_rope(jnp.asarray(x), jnp.asarray(pos), 500.0))
  # Complex form: pair (x_i, x_{i+K/2}) as x_i + i x_{i+K/2}, times exp(i pos theta^(-2i/K)).
  freq = 500.0 ** (-2 * np.arange(K // 2) / K)
  z = (x[..., :K // 2] + 1j * x[..., K // 2:]) * np.exp(1j * pos[..., None, None] * freq)
  assert_close(out, np.concatenate([z.real, z.imag], axis=-1), rel=1e-12, maxabs=1e-12)
  # <rope(q, m), rope(k, n)> depends on m - n only.
  q, k = rng.normal(size=(2, 1, 1, 1, K))
  def dot(m, n):
    rq = attention.apply_rope(jnp.asarray(q, jnp.float32), jnp.full((1, 1), m), 10000.0)
    rk = attention.apply_rope(jnp.asarray(k, jnp.float32), jnp.full((1, 1), n), 10000.0)
    return float(jnp.sum(rq * rk))
  np.testing.assert_allclose(dot(7, 3), dot(104, 100), rtol=1e-5)
  assert abs(dot(7, 3) - dot(7, 4)) > 1e-3
  bf16 = attention.apply_rope(jnp.asarray(x, jnp.bfloat16), jnp.asarray(pos), 500.0)
  assert bf16.dtype == jnp.bfloat16


@pytest.mark.parametrize("fn", [attention.causal_attention, attention.causal_attention_reference])
@pytest.mark.parametrize("shapes, pattern", [
    (((2, 5, 4), (2, 5, 2, 8), (2, 5, 2, 8)), r"^q_BTHK: expected 4 axes"),
    (((2, 5, 4, 8), (2, 5, 2, 6), (2, 5, 2, 8)), r"^k_BSGK: .*K=8"),
    (((2, 5, 4, 8), (2, 5, 3, 8), (2, 5, 3, 8)), r"^q_BTHK: .*H=4.*G=3 of k_BSGK"),
    (((2, 5, 4, 8), (2, 5, 2, 8), (2, 5, 1, 8)), r"^v_BSGV: .*G=2"),
    (((2, 5, 4, 8), (2, 6, 2, 8), (2, 6, 2, 8)), r"^k_BSGK: expected S = T = 5"),
])
def test_bad_shapes_raise(fn, shapes, pattern):
  with pytest.raises(ValueError, match=pattern):
    fn(*(jnp.zeros(s) for s in shapes))


def test_bad_step_and_rope_inputs_raise():
  q, k, v = jnp.zeros((2, 4, 8)), jnp.zeros((2, 10, 2, 8)), jnp.zeros((2, 10, 2, 6))
  with pytest.raises(ValueError, match=r"^k_cache_BSGK: .*K=8"):
    attention.attention_step(q, jnp.zeros((2, 10, 2, 4)), v, jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match=r"^v_cache_BSGV: .*S=10"):
    attention.attention_step(q, k, jnp.zeros((2, 9, 2, 6)), jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match=r"^length_B: .*B=2"):
    attention.attention_step(q, k, v, jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match=r"^segment_ids_BT: .*T=5"):
    attention.causal_attention(jnp.zeros((2, 5, 4, 8)), jnp.zeros((2, 5, 2, 8)),
                               jnp.zeros((2, 5, 2, 8)), segment_ids_BT=jnp.zeros((2, 4), int))
  with pytest.raises(ValueError, match="even head dim"):
    attention.apply_rope(jnp.zeros((1, 2, 1, 5)), jnp.zeros((1, 2)), 10000.0)
  with pytest.raises(ValueError, match=r"^positions_BT: .*B=1"):
    attention.apply_rope(jnp.zeros((1, 2, 1, 4)), jnp.zeros((2, 1)), 10000.0)
