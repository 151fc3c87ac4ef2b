"""PaTH attention: oracles agree, blockwise == oracle (values and gradients), decode == forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.ops import attention, path
from tests.ops.helpers import assert_close

# These tests are compile-bound on CPU: skip LLVM's optimisation passes (same HLO, same numerics,
# about half the compile time).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

ARGS = ("q_BTHK", "k_BTGK", "v_BTGV", "w_BTGK", "beta_BTG", "g_BTH")


def make_inputs(seed, B, T, H, G, K, V, *, beta_range=(0.0, 2.0), gate=True):
  """q, k, v ~ N(0,1), w L2-normalised, beta ~ U(beta_range), g = log U(0.95, 1) (numpy fp64)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(B, T, G, K))
  x = dict(
      q_BTHK=rng.normal(size=(B, T, H, K)),
      k_BTGK=rng.normal(size=(B, T, G, K)),
      v_BTGV=rng.normal(size=(B, T, G, V)),
      w_BTGK=w / np.linalg.norm(w, axis=-1, keepdims=True),
      beta_BTG=rng.uniform(*beta_range, size=(B, T, G)),
      g_BTH=np.log(rng.uniform(0.95, 1.0, size=(B, T, H))) if gate else None)
  return x


def cast(x, dtype):
  return {name: None if a is None else jnp.asarray(a, dtype) for name, a in x.items()}


def call(fn, x, **kwargs):
  return fn(*(x[n] for n in ARGS[:5]), g_BTH=x["g_BTH"], **kwargs)


blockwise = jit(path.path_blockwise, static_argnames=("block_size", "return_k_cache", "scale"))
quadratic = jit(path.path_quadratic)
recurrent = jit(path.path_recurrent)
prefill = jit(path.path_prefill, static_argnames=("cache_size", "block_size"))


@functools.partial(jit, static_argnames=("fn", "block_size"))
def forward_and_grads(fn, x, do_BTHV, segment_ids_BT=None, block_size=None):
  """`fn`'s output and the gradients of `sum(out * do)` w.r.t. q, k, v, w, beta, g."""
  kwargs = {} if block_size is None else dict(block_size=block_size)
  f = lambda *a: fn(*a[:5], g_BTH=a[5], segment_ids_BT=segment_ids_BT, **kwargs)
  out, vjp = jax.vjp(f, *(x[n] for n in ARGS))
  return out, vjp(do_BTHV.astype(out.dtype))


def oracle(x, **kwargs):
  """fp64 quadratic oracle, as a numpy array."""
  with jax.enable_x64(True):
    return np.asarray(call(quadratic, cast(x, jnp.float64), **kwargs))


def block_sizes(T):
  """Block sizes 16/32/64 below T, plus the smallest one that holds T in one (padded) chunk."""
  return [C for C in (16, 32, 64) if C < T] + [C for C in (16, 32, 64) if C >= T][:1]


@pytest.mark.slow
@pytest.mark.parametrize("T", [1, 15, 16, 17, 63, 64, 65, 127, 128, 200, 256])
def test_oracles_and_blockwise_agree(T):
  """recurrent == quadratic (fp64, 1e-12) == blockwise (fp32, C in 16/32/64), both beta ranges."""
  gate = T % 2 == 1  # alternate the FoX gate over the T grid
  for beta_range in [(0.0, 2.0), (1.5, 2.0)]:
    x = make_inputs(T, 2, T, 4, 2, 16, 16, beta_range=beta_range, gate=gate)
    with jax.enable_x64(True):
      x64 = cast(x, jnp.float64)
      ref = np.asarray(call(quadratic, x64))
      assert_close(np.asarray(call(recurrent, x64)), ref, rel=1e-12, maxabs=1e-12,
                   name=f"recurrent T={T}")
    x32 = cast(x, jnp.float32)
    for C in block_sizes(T):
      out = call(blockwise, x32, block_size=C)
      assert out.dtype == jnp.float32 and out.shape == (2, T, 4, 16)
      assert_close(np.asarray(out), ref, rel=1e-5, name=f"blockwise T={T} C={C} beta={beta_range}")


def test_oracles_agree_on_gradients():
  x = make_inputs(1, 1, 20, 2, 1, 8, 8)
  do = np.random.default_rng(2).uniform(size=(1, 20, 2, 8))
  with jax.enable_x64(True):
    x64, do = cast(x, jnp.float64), jnp.asarray(do)
    _, grads_rec = forward_and_grads(path.path_recurrent, x64, do)
    _, grads_quad = forward_and_grads(path.path_quadratic, x64, do)
  for name, a, b in zip(ARGS, grads_rec, grads_quad):
    assert_close(np.asarray(a), np.asarray(b), rel=1e-10, maxabs=1e-10, name=f"d{name}")


@pytest.mark.parametrize("beta_range, tol", [((0.0, 2.0), 5e-4), ((1.5, 2.0), 1e-3)])
def test_blockwise_gradients_match_oracle(beta_range, tol):
  B, T, H, G, K, V = 2, 100, 4, 2, 16, 16
  x = make_inputs(3, B, T, H, G, K, V, beta_range=beta_range)
  do = np.random.default_rng(4).uniform(size=(B, T, H, V))
  with jax.enable_x64(True):
    _, ref = forward_and_grads(path.path_quadratic, cast(x, jnp.float64), jnp.asarray(do))
    ref = [np.asarray(r) for r in ref]
  _, out = forward_and_grads(path.path_blockwise, cast(x, jnp.float32), jnp.asarray(do),
                             block_size=32)
  for name, o, r in zip(ARGS, out, ref):
    assert_close(np.asarray(o), r, rel=1e-4 if name[0] in "qkv" else tol, name=f"d{name}")


def test_beta_zero_is_causal_softmax():
  """beta = 0 makes every H_t = I: PaTH is plain causal softmax attention (no positions)."""
  x = make_inputs(5, 2, 70, 4, 2, 16, 8, gate=False)
  x["beta_BTG"] = np.zeros_like(x["beta_BTG"])
  with jax.enable_x64(True):
    ref = np.asarray(attention.causal_attention_reference(
        *(jnp.asarray(x[n]) for n in ARGS[:3])))
  out = call(blockwise, cast(x, jnp.float32), block_size=16)
  assert_close(np.asarray(out), ref, rel=1e-5, name="beta=0")


def test_scale_argument():
  x = make_inputs(6, 1, 40, 2, 2, 8, 8)
  out = call(blockwise, cast(x, jnp.float32), block_size=16, scale=0.3)
  assert_close(np.asarray(out), oracle(x, scale=0.3), rel=1e-5, name="scale=0.3")


def decode(x, cache):
  """Feeds x (dict of [B, T, ...] arrays) token by token through path_step; returns o_BTHV."""
  def body(cache, xt):
    o_BHV, cache = path.path_step(*xt[:5], cache, g_BH=xt[5])
    return cache, o_BHV
  xs = tuple(None if x[n] is None else jnp.swapaxes(x[n], 0, 1) for n in ARGS)
  cache, o_TBHV = jax.lax.scan(body, cache, xs)
  return jnp.swapaxes(o_TBHV, 0, 1), cache


decode_jit = jit(decode)


def assert_close_per_position(out_BTHV, ref_BTHV, rel, name):
  """Each position's output matches to `rel` (relative to that position's norm)."""
  assert np.all(np.isfinite(out_BTHV)), name
  norm_T = lambda x: np.sqrt(np.sum(np.square(x), axis=(0, 2, 3)))
  rel_T = norm_T(out_BTHV - ref_BTHV) / np.maximum(norm_T(ref_BTHV), 1e-30)
  assert rel_T.max() <= rel, f"{name}: worst position {rel_T.argmax()} rel {rel_T.max():.3g}"


def test_step_by_step_decode_equals_forward():
  B, T, H, G, K, V = 2, 300, 4, 2, 16, 16
  x = make_inputs(7, B, T, H, G, K, V, beta_range=(1.5, 2.0), gate=False)
  ref = oracle(x)
  cache = path.path_cache_init(B, T, G, K, V)
  out, cache = decode_jit(cast(x, jnp.float32), cache)
  assert_close_per_position(np.asarray(out), ref, 1e-5, "decode")
  assert np.all(np.asarray(cache.length_B) == T)
  # The cache holds the keys transformed to the end, as the blockwise forward returns them.
  _, k_end = call(blockwise, cast(x, jnp.float32), block_size=64, return_k_cache=True)
  assert_close(np.asarray(cache.k_BSGK), np.asarray(k_end), rel=1e-5, name="k cache")


@pytest.mark.slow
def test_prefill_then_decode_equals_forward():
  B, H, G, K, V, steps = 1, 2, 1, 16, 16, 50
  x = make_inputs(8, B, 130 + steps, H, G, K, V)
  ref = oracle(x)
  x32 = cast(x, jnp.float32)
  for t0 in [1, 63, 64, 70, 130]:
    head = {n: a[:, :t0] for n, a in x32.items()}
    tail = {n: a[:, t0:t0 + steps] for n, a in x32.items()}
    o_prompt, cache = prefill(*(head[n] for n in ARGS[:5]), g_BTH=head["g_BTH"],
                              cache_size=130 + steps, block_size=64)
    o_decode, _ = decode_jit(tail, cache)
    out = np.concatenate([o_prompt, o_decode], axis=1)
    assert_close_per_position(out, ref[:, :t0 + steps], 1e-5, f"prefill {t0}")


def test_right_padded_prefill_then_decode():
  """Rows with different prompt lengths (NaN beyond them) continue decoding from their length."""
  B, T0, H, G, K, V, steps = 2, 70, 4, 2, 16, 16, 20
  lengths = np.array([70, 33])
  x = make_inputs(9, B, T0 + steps, H, G, K, V)
  ref = oracle(x)  # row b's sequence is x[b, :lengths[b] + steps]; causal, so the rest is moot
  prompt, tail = {}, {}
  for n, a in x.items():
    p = a[:, :T0].copy()
    p[1, lengths[1]:] = np.nan
    prompt[n] = jnp.asarray(p, jnp.float32)
    tail[n] = jnp.asarray(np.stack([a[b, lengths[b]:lengths[b] + steps] for b in range(B)]),
                          jnp.float32)
  o_prompt, cache = prefill(
      *(prompt[n] for n in ARGS[:5]), g_BTH=prompt["g_BTH"], length_B=jnp.asarray(lengths),
      cache_size=T0 + steps, block_size=32)
  o_decode, cache = decode_jit(tail, cache)
  assert np.all(np.asarray(cache.length_B) == lengths + steps)
  o_prompt, o_decode = np.asarray(o_prompt), np.asarray(o_decode)
  assert np.all(o_prompt[1, lengths[1]:] == 0)
  for b in range(B):
    out = np.concatenate([o_prompt[b:b + 1, :lengths[b]], o_decode[b:b + 1]], axis=1)
    assert_close_per_position(out, ref[b:b + 1, :lengths[b] + steps], 1e-5, f"row {b}")


PACKED_DOCS = [[1, 15, 50], [40, 24, 16]]  # row 0 ends with 14 padding tokens (T = 80)


def packed_inputs(seed, poison):
  """Two rows of packed documents; padding filled with NaN when `poison`."""
  T = 80
  x = make_inputs(seed, 2, T, 4, 2, 16, 16)
  seg = np.zeros((2, T), np.int32)
  for b, docs in enumerate(PACKED_DOCS):
    seg[b, :sum(docs)] = np.repeat(np.arange(1, len(docs) + 1), docs)
  if poison:
    for a in x.values():
      a[seg == 0] = np.nan
  return x, seg


def test_packed_equals_separate_sequences():
  x, seg = packed_inputs(10, poison=False)
  out = np.asarray(call(blockwise, cast(x, jnp.float32), block_size=16,
                        segment_ids_BT=jnp.asarray(seg)))
  with jax.enable_x64(True):
    packed_ref = np.asarray(call(path.path_recurrent, cast(x, jnp.float64),
                                 segment_ids_BT=jnp.asarray(seg)))
  # Each document alone, as its own row; positions after its end do not affect it (causal).
  spans = [(b, start, n) for b, docs in enumerate(PACKED_DOCS)
           for start, n in zip(np.cumsum([0] + docs[:-1]), docs)]
  separate = {k: np.stack([np.roll(a[b], -start, axis=0) for b, start, _ in spans])
              for k, a in x.items()}
  ref = oracle(separate)
  for i, (b, start, n) in enumerate(spans):
    name = f"row {b} doc len {n}"
    assert_close(out[b, start:start + n], ref[i, :n], rel=1e-5, name=name)
    assert_close(packed_ref[b, start:start + n], ref[i, :n], rel=1e-12, maxabs=1e-12, name=name)
  assert np.all(out[0, sum(PACKED_DOCS[0]):] == 0)


def test_nan_padding_reaches_neither_outputs_nor_gradients():
  clean, seg = packed_inputs(11, poison=False)
  poisoned, _ = packed_inputs(11, poison=True)
  do = jnp.asarray(np.random.default_rng(12).uniform(size=(2, 80, 4, 16)), jnp.float32)
  valid = seg > 0

  seg = jnp.asarray(seg)
  out_c, grads_c = forward_and_grads(path.path_blockwise, cast(clean, jnp.float32), do, seg, 16)
  out_p, grads_p = forward_and_grads(path.path_blockwise, cast(poisoned, jnp.float32), do, seg, 16)
  assert np.all(np.isfinite(out_p))
  np.testing.assert_array_equal(np.asarray(out_p)[valid], np.asarray(out_c)[valid])
  for name, gp, gc in zip(ARGS, grads_p, grads_c):
    gp, gc = np.asarray(gp), np.asarray(gc)
    assert np.all(np.isfinite(gp)), f"d{name} not finite"
    assert np.all(gp[~valid] == 0), f"d{name} nonzero at padding"
    np.testing.assert_allclose(gp[valid], gc[valid], rtol=1e-5, atol=1e-6, err_msg=f"d{name}")


def test_oracles_ignore_nan_padding():
  x, seg = packed_inputs(13, poison=True)
  with jax.enable_x64(True):
    for fn in (path.path_recurrent, path.path_quadratic):
      out = np.asarray(call(fn, cast(x, jnp.float64), segment_ids_BT=jnp.asarray(seg)))
      assert np.all(np.isfinite(out)), fn.__name__


def test_bf16_inputs_run_in_fp32():
  x = make_inputs(14, 1, 70, 2, 1, 16, 16)
  out = call(blockwise, cast(x, jnp.bfloat16), block_size=32)
  assert out.dtype == jnp.bfloat16
  assert_close(np.asarray(out, np.float32), oracle(x), rel=2e-2, name="bf16")


SHAPES = dict(q_BTHK=(2, 9, 4, 8), k_BTGK=(2, 9, 2, 8), v_BTGV=(2, 9, 2, 6), w_BTGK=(2, 9, 2, 8),
              beta_BTG=(2, 9, 2), g_BTH=(2, 9, 4), segment_ids_BT=(2, 9))


@pytest.mark.parametrize("name, shape, expected", [
    ("q_BTHK", (2, 9, 8), "expected 4 axes"),
    ("k_BTGK", (2, 9, 2, 4), "K=8"),
    ("k_BTGK", (2, 8, 2, 8), "T=9"),
    ("v_BTGV", (2, 9, 1, 6), "G=2"),
    ("w_BTGK", (2, 9, 2, 4), "K=8"),
    ("w_BTGK", (2, 9, 4, 8), "G=2"),
    ("beta_BTG", (2, 9, 4), "G=2"),
    ("beta_BTG", (2, 9, 2, 1), "expected 3 axes"),
    ("g_BTH", (2, 9, 2), "H=4"),
    ("segment_ids_BT", (2, 8), "T=9"),
])
@pytest.mark.parametrize("fn", [path.path_blockwise, path.path_quadratic, path.path_recurrent])
def test_bad_shapes_raise(fn, name, shape, expected):
  arrays = {n: jnp.zeros(shape if n == name else s) for n, s in SHAPES.items()}
  arrays["segment_ids_BT"] = arrays["segment_ids_BT"].astype(jnp.int32)
  with pytest.raises(ValueError) as err:
    fn(*(arrays[n] for n in ARGS[:5]), g_BTH=arrays["g_BTH"],
       segment_ids_BT=arrays["segment_ids_BT"])
  assert str(err.value).startswith(name) and expected in str(err.value)


def test_kv_groups_must_divide_query_heads():
  shapes = dict(SHAPES, k_BTGK=(2, 9, 3, 8), v_BTGV=(2, 9, 3, 6), w_BTGK=(2, 9, 3, 8),
                beta_BTG=(2, 9, 3))
  with pytest.raises(ValueError, match=r"q_BTHK: .*H=4.*G=3 of k_BTGK"):
    path.path_blockwise(*(jnp.zeros(shapes[n]) for n in ARGS[:5]))
  with pytest.raises(TypeError, match="segment_ids_BT"):
    path.path_blockwise(*(jnp.zeros(SHAPES[n]) for n in ARGS[:5]),
                        segment_ids_BT=jnp.zeros((2, 9)))


def test_bad_decode_inputs_raise():
  cache = path.path_cache_init(2, 10, 2, 8, 6, num_heads=4)
  args = dict(q_BHK=jnp.zeros((2, 4, 8)), k_BGK=jnp.zeros((2, 2, 8)), v_BGV=jnp.zeros((2, 2, 6)),
              w_BGK=jnp.zeros((2, 2, 8)), beta_BG=jnp.zeros((2, 2)))
  for name, shape, expected in [
      ("w_BGK", (2, 1, 8), "G=2"), ("v_BGV", (2, 2, 5), "V=6"), ("beta_BG", (2, 4), "G=2"),
      ("k_BGK", (2, 2, 4), "K=8")]:
    bad = dict(args, **{name: jnp.zeros(shape)})
    with pytest.raises(ValueError, match=rf"^{name}: .*{expected} as in cache"):
      path.path_step(*bad.values(), cache, g_BH=jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="g_BH"):
    path.path_step(*args.values(), cache)
  with pytest.raises(ValueError, match="g_BH"):
    path.path_step(*args.values(), cache, g_BH=jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="block_size"):
    path.path_blockwise(*(jnp.zeros(SHAPES[n]) for n in ARGS[:5]), block_size=0)
  with pytest.raises(ValueError, match="cache_size"):
    path.path_prefill(*(jnp.zeros(SHAPES[n]) for n in ARGS[:5]), cache_size=4)
