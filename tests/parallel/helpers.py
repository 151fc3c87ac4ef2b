"""Shared pieces of the parallel tests: a tiny decoder config and running a model on a mesh."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lloglin.models import ModelConfig
from lloglin.parallel import mesh as mesh_lib, sharding


def tiny_config(**overrides) -> ModelConfig:
  values = dict(vocab_size=64, d_model=32, num_layers=3, num_heads=8, num_kv_heads=2, head_dim=4,
                mlp_dim=64, max_seq_len=32)
  values.update(overrides)
  return ModelConfig(**values)


def tokens(batch=4, length=12, vocab=64, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, length)), jnp.int32)


def on_mesh(model, mesh_shape):
  """(call, state): call(state, *args) runs `model` jitted under the mesh, state sharded on it."""
  mesh = mesh_lib.make_mesh(mesh_shape)
  graphdef, state = nnx.split(model)
  state = sharding.shard_state(state, model, mesh)
  return mesh, graphdef, state


def hidden_on_mesh(model, mesh_shape, tokens_BT):
  mesh, graphdef, state = on_mesh(model, mesh_shape)
  fn = jax.jit(lambda st, t: nnx.merge(graphdef, st).hidden(t))
  return sharding.use_mesh(mesh, fn)(state, tokens_BT)


def replace(cfg, **kw):
  return dataclasses.replace(cfg, **kw)
