"""Tensor parallelism of the recurrent and PaTH mixers (heads split over `tensor`, like attention)
equals the single-device model: outputs and gradients, every residual mode, the trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lloglin.models import build_model
from lloglin.parallel import sharding
from tests.parallel.helpers import hidden_on_mesh, on_mesh, tiny_config, tokens

# (mixer, its options, mesh): each shared-group case once, split (tp divides the groups) and
# replicated (the groups divide tp); Mamba-2 with one group normalises over all of d_inner.
CASES = [
    ("mamba2", dict(d_state=8), dict(data=2, tensor=4)),  # B/C and the norm span 4 devices
    ("loglinear_mamba2", dict(d_state=8, ngroups=4), dict(data=2, tensor=2)),  # groups split
    ("gdn", {}, dict(data=2, tensor=4)),  # 8 q/k heads split
    ("loglinear_gdn", dict(num_heads=2, num_v_heads=8), dict(data=2, tensor=4)),  # replicated
    ("path", {}, dict(data=2, tensor=4)),  # 2 kv heads replicated
    ("path_fox", {}, dict(data=2, tensor=2)),  # kv heads split
]


def _config(mixer, options, **kw):
  return tiny_config(layer_pattern=mixer, num_layers=1, mlp_dim=0, chunk_size=8,
                     mixer_options={mixer: options}, **kw)


def assert_close_to_scale(tree, ref, tol=1e-5):
  """Every leaf within tol of the reference, relative to the largest entry of that leaf (float32
  sums in another order: the partial sums of tensor parallelism)."""
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(ref)):
    scale = max(float(np.abs(b).max()), 1e-6)
    err = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    assert err <= tol * scale, (jax.tree_util.keystr(path), err, scale)


def _hidden_and_grads(graphdef, state, t, mesh=None):
  """(hidden states, gradients of a loss on them w.r.t. the parameters), on `mesh` if given."""
  params, rest = nnx.split_state(state, nnx.Param, ...)
  w_BTD = jax.random.normal(jax.random.key(1), (*t.shape, 32))  # tiny_config: d_model 32

  def loss(params, rest):
    h_BTD = nnx.merge(graphdef, params, rest).hidden(t)
    return jnp.sum(h_BTD * w_BTD), h_BTD

  fn = jax.jit(jax.grad(loss, has_aux=True))
  grads, h_BTD = fn(params, rest) if mesh is None else sharding.use_mesh(mesh, fn)(params, rest)
  return h_BTD, grads


@pytest.mark.parametrize("mixer, options, mesh_shape", CASES, ids=[c[0] for c in CASES])
def test_tp_mixer_equals_single_device(mixer, options, mesh_shape):
  model = build_model(_config(mixer, options))
  t = tokens(length=16)
  ref_h, ref_g = _hidden_and_grads(*nnx.split(model), t)
  mesh, graphdef, state = on_mesh(model, mesh_shape)
  h, g = _hidden_and_grads(graphdef, state, t, mesh)
  np.testing.assert_allclose(h, ref_h, atol=1e-5, rtol=1e-5)
  assert_close_to_scale(g, ref_g)
  assert np.abs(np.asarray(ref_h)).max() > 0.1
