"""Tensor parallelism (shard_map + psum) equals the single-device model, forward and backward."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lloglin.layers import register_mixer
from lloglin.layers.linear import dense
from lloglin.models import build_model
from lloglin.parallel import sharding, tensor_parallel
from tests.parallel.helpers import hidden_on_mesh, on_mesh, replace, tiny_config, tokens


@pytest.mark.parametrize("num_kv_heads, mesh_shape", [
    (2, dict(data=1, tensor=8)),  # kv heads replicated (8 % 2 == 0), TP = 8
    (8, dict(data=1, tensor=8)),  # kv heads split, TP = 8
    (2, dict(data=2, fsdp=2, tensor=2)),  # split, data x fsdp x tensor
])
def test_standard_tp_equals_single_device(num_kv_heads, mesh_shape):
  model = build_model(tiny_config(num_kv_heads=num_kv_heads))
  ref = model.hidden(tokens())
  out = hidden_on_mesh(model, mesh_shape, tokens())
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  assert np.abs(np.asarray(ref)).max() > 0.1


@pytest.mark.parametrize("mode", ["standard", "ladder"])
def test_tp_gradients_equal_single_device(mode):
  model = build_model(tiny_config(residual_mode=mode, num_layers=2))
  t = tokens()

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, rest):
    m = nnx.merge(graphdef, params, rest)
    logits = m(t[:, :-1])
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0] * jnp.arange(11.0))

  ref = jax.grad(loss)(params, rest)
  mesh, _, state = on_mesh(model, dict(data=2, tensor=4))
  params_s, rest_s = nnx.split_state(state, nnx.Param, ...)
  out = sharding.use_mesh(mesh, jax.jit(jax.grad(loss)))(params_s, rest_s)
  chex.assert_trees_all_close(out, ref, atol=2e-6, rtol=1e-4)


def test_parameters_are_split_by_heads_and_mlp_width():
  model = build_model(tiny_config(num_kv_heads=2))
  _, _, state = on_mesh(model, dict(data=1, fsdp=2, tensor=4))
  specs = {path: v.get_value().sharding.spec for path, v in nnx.to_flat_state(state)}
  assert specs[("blocks", 0, "mixer", "q_proj", "kernel")] == P("fsdp", "tensor")
  assert specs[("blocks", 0, "mixer", "o_proj", "kernel")] == P("tensor", "fsdp")
  assert specs[("blocks", 0, "mixer", "k_proj", "kernel")] == P("fsdp")  # 2 kv heads
  assert specs[("blocks", 0, "mlp", "down", "kernel")] == P("tensor", "fsdp")
  assert specs[("blocks", 0, "mixer_norm", "scale")] == P()
  assert specs[("embed", "embedding")] == P("tensor", "fsdp")


def test_indivisible_heads_are_refused():
  abstract = lambda **kw: nnx.eval_shape(lambda: build_model(tiny_config(**kw)))
  with pytest.raises(ValueError, match="tp=4 must divide model.num_heads=6"):
    sharding.param_logical_axes(abstract(num_heads=6, num_kv_heads=3), 4)
  with pytest.raises(ValueError, match="one must divide the other"):
    sharding.param_logical_axes(abstract(num_heads=12, num_kv_heads=6), 4)
  with pytest.raises(ValueError, match="model.mlp_dim=66"):
    sharding.param_logical_axes(abstract(num_kv_heads=8, mlp_dim=66), 4)


def test_desync_syncing_every_module_equals_standard_and_skipping_differs():
  t = tokens()
  base = build_model(tiny_config(num_kv_heads=8))
  ref = base.hidden(t)
  state = nnx.state(base)
  for reduce, equal in [("both", True), ("mlp", False)]:
    cfg = replace(base.cfg, residual_mode="desync", desync_reduce=reduce)
    model = build_model(cfg)
    nnx.update(model, state)
    np.testing.assert_allclose(model.hidden(t), ref, atol=1e-6)  # one device: standard
    out = hidden_on_mesh(model, dict(data=2, tensor=4), t)
    assert np.allclose(out, ref, atol=1e-5) == equal


class _TokenMLP(nnx.Module):
  """A toy per-token mixer y = W2 tanh(W1 x), registered twice: with and without a TP plan."""

  def __init__(self, cfg, *, rngs):
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, rngs=rngs)
    self.w1 = dense(cfg.d_model, 16, **kw)
    self.w2 = dense(16, cfg.d_model, **kw)

  def __call__(self, x_BTD, *, segment_ids_BT=None, positions_BT=None):
    return self.w2(jnp.tanh(self.w1(x_BTD)))


@register_mixer("test_replicated_mixer")
class _Replicated(_TokenMLP):
  """With a running sum over time by lax.scan from a fresh zero carry, as the linear-attention
  ops do: it must run unchanged inside the tensor-parallel region."""

  def __call__(self, x_BTD, *, segment_ids_BT=None, positions_BT=None):
    y_BTD = super().__call__(x_BTD)
    step = lambda c_BD, y_BD: (c_BD + y_BD, c_BD + y_BD)
    carry_BD = jnp.zeros((y_BTD.shape[0], y_BTD.shape[2]), y_BTD.dtype)
    _, s_TBD = jax.lax.scan(step, carry_BD, y_BTD.swapaxes(0, 1))
    return s_TBD.swapaxes(0, 1) / y_BTD.shape[1]


@register_mixer("test_tp_mixer")
class _Declared(_TokenMLP):
  calls = 0

  def tp_param_axes(self, tp):
    return {"w1.kernel": ("embed", "heads"), "w2.kernel": ("heads", "embed")}

  def tp_call(self, x_BTD, *, tp, axis_name, segment_ids_BT=None, positions_BT=None):
    assert self.w1.kernel.shape == (32, 16 // tp)  # this device's column block
    type(self).calls += 1
    return self(x_BTD)


@pytest.mark.parametrize("mixer", ["test_replicated_mixer", "test_tp_mixer"])
def test_mixers_without_and_with_a_tp_plan(mixer):
  model = build_model(tiny_config(layer_pattern=f"attention,{mixer}", num_kv_heads=8))
  ref = model.hidden(tokens())
  calls = _Declared.calls
  out = hidden_on_mesh(model, dict(data=2, tensor=4), tokens())
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  assert (_Declared.calls > calls) == (mixer == "test_tp_mixer")
  plan = tensor_parallel.plan_for(model.blocks[1].mixer)
  assert (plan is None) == (mixer == "test_replicated_mixer")
