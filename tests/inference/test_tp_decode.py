"""KV-cache decoding under tensor parallelism equals the full forward; the benchmark runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lloglin.models import build_model
from lloglin.inference import tp_decode
from lloglin.parallel import sharding
from tests.parallel.helpers import on_mesh, tiny_config, tokens


@pytest.mark.parametrize("mode, num_kv_heads", [("standard", 2), ("ladder", 4)])
def test_tp_decode_matches_the_full_forward(mode, num_kv_heads):
  cfg = tiny_config(residual_mode=mode, num_kv_heads=num_kv_heads, num_layers=2)
  model = build_model(cfg)
  t = tokens(batch=4, length=6)
  ref = model(t)
  mesh, graphdef, state = on_mesh(model, dict(data=2, tensor=4))
  caches = tp_decode.init_cache(cfg, 4, 8, mesh=mesh)
  assert caches[0][0].shape == (4, 8, tp_decode.cache_heads(cfg, 4), cfg.head_dim)
  assert caches[0][0].sharding.spec == jax.sharding.PartitionSpec("data", None, "tensor", None)
  step = sharding.use_mesh(mesh, jax.jit(
      lambda st, c, tok, pos: tp_decode.decode_step(nnx.merge(graphdef, st), c, tok, pos)))
  for i in range(t.shape[1]):
    logits, caches = step(state, caches, t[:, i], jnp.full((4,), i, jnp.int32))
    np.testing.assert_allclose(logits, ref[:, i], atol=2e-5, rtol=2e-5)


def test_generate_loop_on_one_device_equals_stepwise_argmax():
  cfg = tiny_config(residual_mode="ladder", num_layers=2)
  model = build_model(cfg)
  graphdef, state = nnx.split(model)
  caches = tp_decode.init_cache(cfg, 2, 8)
  out, _ = tp_decode.make_generate(graphdef, 5)(state, caches, jnp.array([3, 5]),
                                                jnp.zeros((2,), jnp.int32))
  forward = jax.jit(lambda m, s: m(s))  # causal: a fixed-size buffer, read at position i
  seq = np.zeros((2, 6), np.int32)
  seq[:, 0] = [3, 5]
  for i in range(5):
    seq[:, i + 1] = np.argmax(np.asarray(forward(model, jnp.asarray(seq)))[:, i], axis=-1)
  np.testing.assert_array_equal(out, seq[:, 1:])


@pytest.mark.slow
def test_benchmark_smoke_runs_and_sees_ladder_overlap(monkeypatch, capsys):
  from benchmarks import bench_tp_decode
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  rows = bench_tp_decode.main(["--smoke", "--modes", "standard,ladder", "--batches", "2"])
  by_mode = {r["mode"]: r for r in rows}
  assert by_mode["standard"]["tp"] == 8 and by_mode["ladder"]["tokens_per_s"] > 0
  assert by_mode["ladder"]["all_reduces_overlapping_matmuls"] == by_mode["ladder"]["all_reduces"]
  assert by_mode["standard"]["all_reduces_overlapping_matmuls"] == 0
  assert "| tiny | 2 |" in capsys.readouterr().out
