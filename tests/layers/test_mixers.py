"""The sequence-mixer layers: construction from config, shapes and dtypes, causality, packed
documents (convolutions included), NaN padding, gradients, and the reductions
log-linear(lambda = 1) == base and PaTH(beta = 0, no gate) == attention without positions.

The behavioural checks of one mixer share one jitted forward + backward of fixed [4, 48] batches
(chunk 16, so chunk boundaries and partial chunks are crossed): one compilation per mixer.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lloglin.layers import make_mixer, mixer_names
from lloglin.layers.loglinear import LevelScales
from lloglin.models import ModelConfig, build_model
from lloglin.ops.attention import causal_attention

MIXERS = ["mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn", "path", "path_fox"]
B, T, D = 4, 48, 32


def tiny_config(**overrides):
  values = dict(vocab_size=50, d_model=D, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                mlp_dim=64, max_seq_len=64, chunk_size=16,
                mixer_options={"mamba2": {"d_state": 8}, "loglinear_mamba2": {"d_state": 8},
                               "gdn": {"num_heads": 2, "num_v_heads": 4},
                               "loglinear_gdn": {"num_heads": 2, "num_v_heads": 4}})
  values.update(overrides)
  return ModelConfig(**values)


def build(name, seed=0, **overrides):
  return make_mixer(name, tiny_config(**overrides), rngs=nnx.Rngs(params=seed))


def forward_fn(mixer):
  """Jitted (x_BTD, segment_ids_BT) -> y_BTD of the mixer's current weights."""
  graphdef, state = nnx.split(mixer)
  return functools.partial(jax.jit(lambda state, x, seg: nnx.merge(graphdef, state)(
      x, segment_ids_BT=seg)), state)


def forward_and_grads_fn(mixer):
  """Jitted (x_BTD, segment_ids_BT) -> (y_BTD, parameter grads, x grads) of the loss
  sum(y^2) over real tokens: forward and backward in one compilation."""
  graphdef, params = nnx.split(mixer, nnx.Param)

  @jax.jit
  def f(params, x_BTD, segment_ids_BT):
    real = (segment_ids_BT > 0)[..., None]
    y_fn = lambda p, x: nnx.merge(graphdef, p)(x, segment_ids_BT=segment_ids_BT)
    y_BTD, vjp = jax.vjp(y_fn, params, x_BTD)
    g_params, g_x = vjp(jnp.where(real, 2.0 * y_BTD, 0.0))
    return y_BTD, g_params, g_x

  return functools.partial(f, params)


def random_x(seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, D)), jnp.float32)


def test_every_mixer_is_registered():
  assert set(MIXERS + ["attention"]) <= set(mixer_names())


def abstract_call(module_fn, x, segment_ids_BT):
  """Output shape/dtype of module(x), building the module abstractly (no initialisation)."""
  graphdef, state = nnx.split(nnx.eval_shape(module_fn))
  return jax.eval_shape(lambda state, x: nnx.merge(graphdef, state)(
      x, segment_ids_BT=segment_ids_BT), state, x)


@pytest.mark.parametrize("name", MIXERS)
def test_output_shape_and_dtype(name):
  seg = jnp.ones((2, 40), jnp.int32)
  for dtype in ("float32", "bfloat16"):
    x = jax.ShapeDtypeStruct((2, 40, D), jnp.dtype(dtype))
    out = abstract_call(lambda: build(name, dtype=dtype), x, seg)
    assert out.shape == (2, 40, D) and out.dtype == jnp.dtype(dtype)
  params = jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: build(name, dtype="bfloat16")),
                                     nnx.Param))
  assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
  # Chosen by name in model.layer_pattern, the mixer runs inside the decoder.
  model = nnx.eval_shape(lambda: build_model(tiny_config(num_layers=2, layer_pattern=name)))
  assert [type(b.mixer).mixer_name for b in model.blocks] == [name] * 2
  logits = abstract_call(lambda: build_model(tiny_config(num_layers=2, layer_pattern=name)),
                         jax.ShapeDtypeStruct((2, 40), jnp.int32), seg)
  assert logits.shape == (2, 40, 50)


@pytest.mark.parametrize("name", MIXERS)
def test_causal_packed_padding_safe_and_differentiable(name):
  """Four [4, 48] batches through one jitted forward + backward (chunk 16).

  1. Causality: rows 1-3 are row 0 with one token changed (t = 0, 16 (a chunk start), 33);
     outputs before it are unchanged, outputs at it change.
  2. Packed == separate: rows [a | b | padding] (a crosses a chunk boundary, b starts mid-chunk)
     equal a and b run alone from the row start, short convolutions included.
  3. NaN in the padding changes no output of a real token and no gradient.
  4. Every parameter gets a finite, non-zero gradient.
  """
  f = forward_and_grads_fn(build(name))
  x = np.array(random_x())
  for t, row in zip((0, 16, 33), (1, 2, 3)):
    x[row] = x[0]
    x[row, t] += 1.0
  y, _, _ = f(jnp.asarray(x), jnp.ones((B, T), jnp.int32))
  y = np.asarray(y)
  assert np.isfinite(y).all()
  for t, row in zip((0, 16, 33), (1, 2, 3)):
    np.testing.assert_allclose(y[row, :t], y[0, :t], atol=1e-6, rtol=0)
    assert np.abs(y[row, t] - y[0, t]).max() > 1e-4

  la, lb = 21, 19  # then 8 padding tokens
  x = np.array(random_x(1))
  seg_packed = np.broadcast_to(np.array([1] * la + [2] * lb + [0] * (T - la - lb), np.int32),
                               (B, T))
  x_alone = np.zeros((B, T, D), np.float32)
  x_alone[:2, :la] = x[:2, :la]
  x_alone[2:, :lb] = x[2:, la:la + lb]
  seg_alone = np.stack([(np.arange(T) < la)] * 2 + [(np.arange(T) < lb)] * 2).astype(np.int32)
  y_packed, g_params, g_x = f(jnp.asarray(x), jnp.asarray(seg_packed))
  y_alone, _, _ = f(jnp.asarray(x_alone), jnp.asarray(seg_alone))
  y_packed, y_alone = np.asarray(y_packed), np.asarray(y_alone)
  np.testing.assert_allclose(y_packed[:2, :la], y_alone[:2, :la], atol=2e-5, rtol=1e-4)
  np.testing.assert_allclose(y_packed[2:, la:la + lb], y_alone[2:, :lb], atol=2e-5, rtol=1e-4)

  leaves = jax.tree.leaves(g_params)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert all(float(jnp.abs(g).sum()) > 0 for g in leaves)
  y_nan, g_params_nan, g_x_nan = f(jnp.asarray(np.where(seg_packed[..., None] > 0, x, np.nan)),
                                   jnp.asarray(seg_packed))
  real = slice(0, la + lb)
  np.testing.assert_array_equal(np.asarray(y_nan)[:, real], y_packed[:, real])
  np.testing.assert_array_equal(np.asarray(g_x_nan)[:, real], np.asarray(g_x)[:, real])
  for a, b in zip(jax.tree.leaves(g_params_nan), leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("base,loglinear", [("mamba2", "loglinear_mamba2"),
                                            ("gdn", "loglinear_gdn")])
def test_loglinear_with_unit_lambda_is_its_base_layer(base, loglinear, monkeypatch):
  cfg = tiny_config(mixer_options={base: {}, loglinear: {}})
  base_mixer = make_mixer(base, cfg, rngs=nnx.Rngs(params=0))
  ll_mixer = make_mixer(loglinear, cfg, rngs=nnx.Rngs(params=1))
  nnx.update(ll_mixer, nnx.state(base_mixer))  # shared weights; level scales keep their own
  seg = jnp.asarray(np.array([[1] * 30 + [2] * 18] * B, np.int32))
  x = random_x(2)
  y_base = np.asarray(forward_fn(base_mixer)(x, seg))
  y_learned = np.asarray(forward_fn(ll_mixer)(x, seg))
  assert np.abs(y_learned - y_base).max() > 1e-3  # the learned lambdas do act
  monkeypatch.setattr(LevelScales, "__call__",
                      lambda self, x: jnp.ones(x.shape[:2] + (self.num_heads, self.num_levels)))
  np.testing.assert_allclose(np.asarray(forward_fn(ll_mixer)(x, seg)), y_base, atol=1e-5,
                             rtol=1e-5)


def test_loglinear_levels_follow_max_seq_len():
  for max_len, levels in ((64, 7), (65, 8), (2048, 12)):
    for name in ("loglinear_mamba2", "loglinear_gdn"):
      mixer = build(name, max_seq_len=max_len)
      assert mixer.level_scales.level_weight.shape == (mixer.num_v_heads if name.endswith("gdn")
                                                       else mixer.num_heads, levels)


def test_path_with_zero_beta_and_no_gate_is_attention_without_positions():
  mixer = build("path")
  mixer.beta_proj.kernel[...] = jnp.zeros_like(mixer.beta_proj.kernel[...])
  mixer.beta_proj.bias[...] = jnp.full_like(mixer.beta_proj.bias[...], -1e4)  # beta = 0 exactly
  seg = jnp.asarray(np.array([[1] * 30 + [2] * 18] * B, np.int32))
  x = random_x(3)


  @jax.jit
  def attention(x):
    q = mixer.q_proj(x).reshape(B, T, 4, 8)
    k = mixer.k_proj(x).reshape(B, T, 2, 8)
    v = mixer.v_proj(x).reshape(B, T, 2, 8)
    o = causal_attention(q, k, v, segment_ids_BT=seg, implementation="xla")
    return mixer.o_proj(o.reshape(B, T, 32))

  np.testing.assert_allclose(np.asarray(forward_fn(mixer)(x, seg)), np.asarray(attention(x)),
                             atol=1e-5, rtol=1e-5)


def test_short_conv_restarts_at_document_starts():
  from lloglin.layers.conv import causal_conv
  x = jnp.arange(1.0, 9.0).reshape(1, 8, 1)
  kernel = jnp.array([[1.0], [10.0], [100.0]])  # y_t = x_{t-2} + 10 x_{t-1} + 100 x_t
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
  y = causal_conv(x, kernel, segment_ids_BT=seg)[0, :, 0]
  np.testing.assert_array_equal(y, [100, 210, 321, 400, 540, 654, 765, 800])


@pytest.mark.parametrize("name", MIXERS)
def test_bad_options_raise_clear_errors(name):
  with pytest.raises(ValueError, match=f"mixer_options.{name}.*valid"):
    build(name, mixer_options={name: {"no_such_option": 1}})
  if has_pallas_kernel(name):
    assert build(name, mixer_impl="pallas").dispatch.kernel
  else:
    with pytest.raises(ValueError, match="mixer_impl='pallas'"):
      build(name, mixer_impl="pallas")
  with pytest.raises(ValueError, match="mixer_impl='cuda'"):
    build(name, mixer_impl="cuda")


def has_pallas_kernel(name):
  """The HAS_PALLAS_KERNEL flag of the module defining the mixer."""
  return sys.modules[type(build(name)).__module__].HAS_PALLAS_KERNEL


@pytest.mark.parametrize("name", ["mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn", "path",
                                  "path_fox"])
def test_pallas_impl_equals_xla(name):
  """mixer_impl='pallas' (interpreted on CPU) == 'xla': outputs, parameter and input gradients,
  with padding after the document of one row and two documents packed in another (head dim 16:
  the kernels tile powers of two)."""
  assert has_pallas_kernel(name)
  seg = np.ones((B, T), np.int32)
  seg[1, 40:] = 0
  seg[2, 21:] = 2
  seg = jnp.asarray(seg)
  x = random_x(3)
  y_x, gp_x, gx_x = forward_and_grads_fn(build(name, mixer_impl="xla", head_dim=16))(x, seg)
  y_p, gp_p, gx_p = forward_and_grads_fn(build(name, mixer_impl="pallas", head_dim=16))(x, seg)
  # Interpreted on a CPU, both sides do float32 arithmetic; compiled on a GPU, float32 dots run
  # as TF32 by default (about 1e-3 relative) in the kernels and in XLA, each in its own order.
  tol_y, tol_g = (5e-3, 5e-3) if jax.default_backend() == "gpu" else (1e-5, 1e-4)
  np.testing.assert_allclose(np.asarray(y_p), np.asarray(y_x), atol=tol_y, rtol=tol_y)
  np.testing.assert_allclose(np.asarray(gx_p), np.asarray(gx_x), atol=tol_g, rtol=tol_g)
  for a, b in zip(jax.tree.leaves(gp_p), jax.tree.leaves(gp_x)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol_g, rtol=tol_g)


@pytest.mark.gpu
@pytest.mark.parametrize("name", MIXERS)
def test_gpu_bf16_pallas_mixer_is_causal(name):
  """The GPU's kernels as training runs them (mixer_impl='pallas', bf16, head dim and chunks of
  64: GDN's Mosaic kernels under 'auto'): a changed input token changes no output before it (at
  t = 70 inside the second chunk, and at the third chunk's start) and changes the output at it.
  The interpreted kernels' causality is test_causal_packed_padding_safe_and_differentiable's."""
  T_ = 192
  f = forward_fn(build(name, mixer_impl="pallas", dtype="bfloat16", head_dim=64, chunk_size=64,
                       max_seq_len=T_))
  x = np.repeat(np.random.default_rng(5).normal(size=(1, T_, D)), 3, axis=0)
  for row, t in ((1, 70), (2, 128)):
    x[row, t] += 1.0
  y = np.asarray(f(jnp.asarray(x, jnp.bfloat16), jnp.ones((3, T_), jnp.int32)), np.float32)
  for row, t in ((1, 70), (2, 128)):
    np.testing.assert_array_equal(y[row, :t], y[0, :t], err_msg=f"{name}: t={t}")
    assert np.abs(y[row, t] - y[0, t]).max() > 0, (name, t)


def test_mamba2_and_gdn_head_errors():
  with pytest.raises(ValueError, match="head_dim=12"):
    build("mamba2", mixer_options={"mamba2": {"head_dim": 12}})
  with pytest.raises(ValueError, match="ngroups=3"):
    build("mamba2", mixer_options={"mamba2": {"ngroups": 3}})
  with pytest.raises(ValueError, match="num_v_heads=3"):
    build("gdn", mixer_options={"gdn": {"num_heads": 2, "num_v_heads": 3}})


def test_hybrid_decoder_builds_and_runs():
  model = build_model(tiny_config(num_layers=4, layer_pattern="gdn,gdn,gdn,attention"))
  assert [type(b.mixer).__name__ for b in model.blocks] == ["GatedDeltaNet"] * 3 + ["Attention"]
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 20)), jnp.int32)
  logits = jax.jit(lambda t: model(t, segment_ids_BT=jnp.ones_like(t)))(tokens)
  assert logits.shape == (2, 20, 50) and np.isfinite(np.asarray(logits)).all()


def test_attention_auto_impl_avoids_cudnn_under_tensor_parallelism(monkeypatch):
  """'auto' on a GPU in bf16: cuDNN, except inside the tensor-parallel shard_map (a cuDNN TP
  train step segfaulted on 2 x H200); float32 and CPU stay XLA; an explicit choice is kept."""
  from lloglin.layers.attention import resolve_attention_impl
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert resolve_attention_impl("auto", jnp.bfloat16) == "cudnn"
  assert resolve_attention_impl("auto", jnp.bfloat16, tensor_parallel=True) == "xla"
  assert resolve_attention_impl("auto", jnp.float32) == "xla"
  assert resolve_attention_impl("cudnn", jnp.bfloat16, tensor_parallel=True) == "cudnn"
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert resolve_attention_impl("auto", jnp.bfloat16) == "xla"
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    resolve_attention_impl("flash", jnp.bfloat16)


@pytest.mark.parametrize("mixer", ["mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn", "path",
                                   "path_fox"])
def test_auto_mixer_impl_per_mixer(mixer, monkeypatch):
  """'auto' takes every mixer's Pallas kernel on Hopper (each checked and timed on an H200) and
  XLA on any other device."""
  from lloglin.layers import registry
  cfg = tiny_config(layer_pattern=mixer, mixer_impl="auto")
  monkeypatch.setattr(registry, "on_hopper_gpu", lambda: True)
  assert make_mixer(mixer, cfg, rngs=nnx.Rngs(0)).dispatch.kernel
  monkeypatch.setattr(registry, "on_hopper_gpu", lambda: False)
  assert not make_mixer(mixer, cfg, rngs=nnx.Rngs(0)).dispatch.kernel


def test_kernel_dispatch_interprets_only_off_gpu(monkeypatch):
  """The one kernel decision: forced or not, 'auto' only where available on Hopper, and a kernel
  compiled on a GPU, interpreted elsewhere."""
  from lloglin.layers import registry
  from lloglin.layers.registry import KernelDispatch, kernel_dispatch
  monkeypatch.setattr(registry, "on_hopper_gpu", lambda: True)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert kernel_dispatch(True) == KernelDispatch(kernel=True, interpret=False)
  assert kernel_dispatch(None) == KernelDispatch(kernel=True, interpret=False)
  assert kernel_dispatch(None, available=False) == KernelDispatch(kernel=False, interpret=False)
  assert kernel_dispatch(False) == KernelDispatch(kernel=False, interpret=False)
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert kernel_dispatch(True) == KernelDispatch(kernel=True, interpret=True)
