"""Meshes from config and the logical-axis rules (no model compilation: fast)."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from lloglin.models import build_model
from lloglin.parallel import distributed, mesh as mesh_lib, sharding
from tests.parallel.helpers import tiny_config


@pytest.mark.parametrize("cfg, shape", [
    (None, (8, 1, 1)),
    (dict(data=-1, fsdp=1, tensor=1), (8, 1, 1)),
    (dict(data=2, fsdp=1, tensor=-1), (2, 1, 4)),
    (dict(data=1, fsdp=-1, tensor=2), (1, 4, 2)),
    (dict(data=2, fsdp=2, tensor=2), (2, 2, 2)),
    (dict(data=1, fsdp=1, tensor=1), (1, 1, 1)),  # the first device only
])
def test_mesh_shapes(cfg, shape):
  mesh = mesh_lib.make_mesh(cfg)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == shape
  assert mesh.devices.size == int(np.prod(shape))


@pytest.mark.parametrize("cfg, match", [
    (dict(data=-1, tensor=-1), "at most one axis"),
    (dict(data=3, tensor=-1), "do not divide the 8 devices"),
    (dict(data=4, tensor=4), "needs 16 devices"),
    (dict(data=0), "mesh.data=0"),
    (dict(model=2), r"unknown mesh axis name\(s\) \['model'\]"),
])
def test_bad_meshes_are_named(cfg, match):
  with pytest.raises(ValueError, match=match):
    mesh_lib.make_mesh(cfg)


def test_spec_rules_drop_what_does_not_divide():
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2))
  assert sharding.spec_for(("embed", "heads"), (32, 64), mesh) == P("fsdp", "tensor")
  assert sharding.spec_for(("vocab", "embed"), (65, 32), mesh) == P(None, "fsdp")  # odd vocab
  assert sharding.spec_for(("batch", "length"), (8, 5), mesh) == P(("data", "fsdp"))
  assert sharding.spec_for(("batch", "length"), (6, 5), mesh) == P("data")
  assert sharding.spec_for(None, (6, 40), mesh) == P(None, "fsdp")  # unknown: FSDP fallback
  assert sharding.spec_for(None, (40,), mesh) == P()  # vectors stay whole
  assert sharding.spec_for(("embed", "heads"), (32, 64), mesh, only=("tensor",)) == P(None,
                                                                                        "tensor")


def test_optimizer_state_follows_its_parameter():
  model = build_model(tiny_config())
  params = nnx.state(model, nnx.Param)
  opt_state = optax.adamw(1e-3).init(params)
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2))
  axes = sharding.param_logical_axes(model, 2)
  specs = sharding.tree_specs({"params": params, "opt": opt_state}, axes, mesh)
  q = ("blocks", 0, "mixer", "q_proj", "kernel")
  flat = {sharding.keypath_keys(kp): s for kp, s in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda s: isinstance(s, P))}
  assert flat[("params",) + q] == P("fsdp", "tensor")
  assert flat[("opt", 0, "mu") + q] == P("fsdp", "tensor")
  assert flat[("opt", 0, "nu") + q] == P("fsdp", "tensor")
  assert flat[("opt", 0, "count")] == P()


def test_global_batch_splits_over_data_and_fsdp_and_names_bad_sizes():
  mesh = mesh_lib.make_mesh(dict(data=2, fsdp=2, tensor=2))
  batch = distributed.global_batch({"inputs": np.zeros((8, 3), np.int32)}, mesh)
  assert batch["inputs"].sharding.spec == P(("data", "fsdp"))
  with pytest.raises(ValueError, match="6 rows .* not divisible by the 4 batch shards"):
    distributed.global_batch({"inputs": np.zeros((6, 3), np.int32)}, mesh)
