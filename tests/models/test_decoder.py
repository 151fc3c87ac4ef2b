"""The decoder LM: shapes, causality, segment isolation, config errors, overfitting one batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lloglin.models import ModelConfig, build_model, count_params


def tiny_config(**overrides):
  values = dict(vocab_size=50, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                mlp_dim=64, max_seq_len=64)
  values.update(overrides)
  return ModelConfig(**values)


@pytest.mark.parametrize("tie", [True, False])
def test_logits_shape_and_dtype(tie):
  model = build_model(tiny_config(tie_embeddings=tie))
  tokens = jnp.zeros((3, 17), jnp.int32)
  logits = model(tokens)
  assert logits.shape == (3, 17, 50) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  head_params = [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)) if p[0] == "head"]
  assert bool(head_params) == (not tie)


def test_changing_a_later_token_never_changes_earlier_logits():
  model = build_model(tiny_config())
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 50, (2, 24)).astype(np.int32)
  base = np.asarray(model(jnp.asarray(tokens)))
  for t in (0, 5, 23):
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 1) % 50
    out = np.asarray(model(jnp.asarray(changed)))
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert np.abs(out[:, t] - base[:, t]).max() > 1e-6  # the changed position does react


def test_packed_documents_do_not_see_each_other():
  model = build_model(tiny_config())
  rng = np.random.default_rng(1)
  a, b = rng.integers(0, 50, 10), rng.integers(0, 50, 6)
  packed = jnp.asarray(np.concatenate([a, b])[None], jnp.int32)
  seg = jnp.asarray([[1] * 10 + [2] * 6], jnp.int32)
  pos = jnp.asarray([list(range(10)) + list(range(6))], jnp.int32)
  out = np.asarray(model(packed, segment_ids_BT=seg, positions_BT=pos))
  alone = np.asarray(model(jnp.asarray(b[None], jnp.int32)))
  np.testing.assert_allclose(out[0, 10:], alone[0], atol=2e-5, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  model = build_model(tiny_config(dtype="bfloat16"))
  dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  assert np.isfinite(np.asarray(model(jnp.ones((1, 8), jnp.int32)))).all()


def test_param_count_matches_the_formula():
  cfg = tiny_config(tie_embeddings=False)
  D, F, V, H, G, K = 32, 64, 50, 4, 2, 8
  per_layer = D * H * K * 2 + D * G * K * 2 + 3 * D * F + 2 * D
  assert count_params(build_model(cfg)) == V * D * 2 + 2 * per_layer + D


def test_overfits_one_batch():
  model = build_model(tiny_config())
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 50, (4, 16)), jnp.int32)
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  def loss_fn(m):
    logits = m(tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @nnx.jit
  def step(m, o):
    loss, grads = nnx.value_and_grad(loss_fn)(m)
    o.update(m, grads)
    return loss

  first = float(step(model, opt))
  for _ in range(150):
    last = float(step(model, opt))
  assert first > 3.0 and last < 0.05, (first, last)


@pytest.mark.parametrize("bad, match", [
    (dict(num_kv_heads=3), "multiple of model.num_kv_heads"),
    (dict(dtype="float8"), "model.dtype"),
    (dict(layer_pattern="attention,nope"), "unknown mixer 'nope'"),
    (dict(d_model=0), "model.d_model must be positive"),
])
def test_bad_model_configs_are_named(bad, match):
  with pytest.raises(ValueError, match=match):
    build_model(tiny_config(**bad))


def test_unknown_model_key_lists_valid_keys():
  with pytest.raises(ValueError, match=r"unknown model config key\(s\) \['dmodel'\].*d_model"):
    ModelConfig.from_dict({"vocab_size": 10, "dmodel": 3})


def test_too_long_sequence_is_refused():
  with pytest.raises(ValueError, match="max_seq_len"):
    build_model(tiny_config(max_seq_len=8))(jnp.zeros((1, 9), jnp.int32))
