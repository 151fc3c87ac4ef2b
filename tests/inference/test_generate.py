"""generate() over caches: batched prompts of different lengths, stop tokens, seeded sampling,
streaming; caches through jit and orbax; clear errors on bad input."""

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lloglin.inference.generate import generate, resolve_decode_impl
from lloglin.layers import registry
from lloglin.models import build_model
from lloglin.models.decoder import steer
from lloglin.parallel import mesh as mesh_lib
from tests.inference.helpers import tiny_config

PROMPTS = [list(range(3, 8)), [int(t) for t in np.random.default_rng(1).integers(0, 64, 40)], [9]]
SAMPLING = dict(temperature=0.9, top_k=20, top_p=0.9)  # one set: one compilation


@pytest.fixture(scope="module")
def model():
  return build_model(tiny_config("attention,mamba2", num_layers=2, max_seq_len=128,
                                residual_mode="parallel"))


def truncate(row, stop):
  return row[:row.index(stop) + 1] if stop in row else row


def test_batched_prompts_equal_each_row_alone_and_the_full_forward(model):
  batch = generate(model, PROMPTS, 12)
  assert [len(r) for r in batch] == [12] * 3
  assert [generate(model, [p], 12)[0] for p in PROMPTS] == batch
  # Greedy: each new token is the argmax of the full forward over prompt + continuation.
  seqs = np.zeros((3, 64), np.int32)
  for b, (p, r) in enumerate(zip(PROMPTS, batch)):
    seqs[b, :len(p) + 12] = p + r
  logits = np.asarray(jax.jit(lambda m, t: m(t))(model, jnp.asarray(seqs)))
  for b, (p, r) in enumerate(zip(PROMPTS, batch)):
    assert np.argmax(logits[b, len(p) - 1:len(p) + 11], axis=-1).tolist() == r


def test_steering_reaches_the_prefill_and_every_decode_step(model):
  """Greedy: each new token is the argmax of the steered full forward; strength 0 draws the
  unsteered tokens."""
  vector = np.random.default_rng(2).normal(size=32).astype(np.float32)
  steering = steer(vector, layer=1, strength=6.0, start=2)
  steered = generate(model, PROMPTS, 12, steering=steering)
  assert steered != generate(model, PROMPTS, 12)
  seqs = np.zeros((3, 64), np.int32)
  for b, (p, r) in enumerate(zip(PROMPTS, steered)):
    seqs[b, :len(p) + 12] = p + r
  logits = np.asarray(jax.jit(lambda m, t, s: m.probe(t, steering=s)["logits"])(
      model, jnp.asarray(seqs), steering))
  for b, (p, r) in enumerate(zip(PROMPTS, steered)):
    assert np.argmax(logits[b, len(p) - 1:len(p) + 11], axis=-1).tolist() == r
  zero = steer(vector, layer=1, strength=0.0, start=2)
  assert generate(model, PROMPTS, 12, steering=zero) == generate(model, PROMPTS, 12)


def test_steering_runs_on_the_plain_path_and_is_checked(monkeypatch):
  net = build_model(tiny_config("attention", max_seq_len=128))
  monkeypatch.setattr(registry, "on_hopper_gpu", lambda: True)
  assert resolve_decode_impl("auto", net, 1, "bf16") == "fused"
  assert resolve_decode_impl("auto", net, 1, "bf16", steered=True) == "plain"
  with pytest.raises(ValueError, match="impl='fused': steering runs on the plain decode path"):
    generate(net, [[1, 2]], 4, impl="fused", steering=steer(np.ones(32), layer=0))
  with pytest.raises(ValueError, match=r"steering.stop_B: expected one bound or one per prompt "
                                       r"\(2,\), got shape \(3,\)"):
    generate(net, [[1], [2]], 4, steering=steer(np.ones(32), layer=0, stop=[1, 2, 3]))
  with pytest.raises(ValueError, match=r"steering layer=2; expected 0\.\.1"):
    generate(net, [[1]], 4, steering=steer(np.ones(32), layer=2))


def test_stop_tokens_end_each_row_and_streaming_draws_the_same(model):
  sampled = generate(model, PROMPTS, 12, seed=3, **SAMPLING)
  stop = sampled[0][4]
  stopped = generate(model, PROMPTS, 12, seed=3, stop_tokens=[stop], **SAMPLING)
  assert stopped == [truncate(r, stop) for r in sampled] and len(stopped[0]) == 5
  streamed = collections.defaultdict(list)
  again = generate(model, PROMPTS, 12, seed=3, stop_tokens=[stop], **SAMPLING,
                   on_token=lambda row, token: streamed[row].append(token))
  assert again == stopped == [streamed[b] for b in range(3)]


def test_seeded_sampling_is_reproducible(model):
  a = generate(model, PROMPTS, 12, seed=1, **SAMPLING)
  assert a == generate(model, PROMPTS, 12, seed=1, impl="plain", **SAMPLING)
  assert a != generate(model, PROMPTS, 12, seed=2, **SAMPLING)


def test_cache_survives_jit_and_an_orbax_round_trip(tmp_path):
  # Every kind of leaf: Fenwick states, PaTH keys without FoX gates (None), conv states.
  net = build_model(tiny_config("loglinear_mamba2,path", num_layers=2, max_seq_len=64))
  step = jax.jit(lambda m, tokens_B, cache: m.decode_step(tokens_B, cache))
  tokens = jnp.asarray([[1, 2], [3, 4], [5, 6]], jnp.int32)
  cache = net.init_cache(2, 16)
  for t in tokens:
    _, cache = step(net, t, cache)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "cache", cache)
  ckpt.wait_until_finished()
  restored = ckpt.restore(tmp_path / "cache", jax.tree.map(ocp.utils.to_shape_dtype_struct, cache))
  chex.assert_trees_all_equal(restored, cache)  # structure, shapes and values
  assert restored.max_len == 16 and int(restored.length_B[0]) == 3
  np.testing.assert_array_equal(step(net, tokens[0], restored)[0], step(net, tokens[0], cache)[0])


def test_cache_shards_over_the_data_axis(model):
  mesh = mesh_lib.make_mesh(dict(data=4, fsdp=1, tensor=1))
  step = jax.jit(lambda m, tokens_B, cache: m.decode_step(tokens_B, cache))
  tokens = jnp.asarray([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32)
  cache = model.init_cache(4, 8)
  sharded = jax.device_put(cache, cache.shardings(mesh))
  assert sharded.layers[1].conv_BWC[0].sharding.spec == jax.sharding.PartitionSpec("data", None,
                                                                                   None)
  for t in tokens:
    logits, cache = step(model, t, cache)
    with jax.set_mesh(mesh):
      logits_sharded, sharded = step(model, t, sharded)
    np.testing.assert_allclose(logits_sharded, logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prompts, kw, message", [
    ([[1] * 120], {}, "max_seq_len"),
    ([[1], []], {}, r"prompts\[1\] is empty"),
    ([], {}, "non-empty list"),
    ([1, 2, 3], {}, "not a token list"),
    ([[64]], {}, "outside the vocabulary"),
    ([[1]], dict(impl="fused"), "impl"),
    ([[1]], dict(top_p=0.0), "top_p"),
])
def test_generate_rejects_bad_input(model, prompts, kw, message):
  with pytest.raises(ValueError, match=message):
    generate(model, prompts, 20, **kw)


def test_cache_entry_points_reject_bad_input(model):
  cache = model.init_cache(2, 16)
  with pytest.raises(ValueError, match="max_len"):
    model.init_cache(1, 1000)
  with pytest.raises(ValueError, match="2 rows"):
    model.prefill(jnp.zeros((3, 4), jnp.int32), cache)
  with pytest.raises(ValueError, match="does not fit"):
    model.prefill(jnp.zeros((2, 20), jnp.int32), cache)
  with pytest.raises(ValueError, match="lengths_B"):
    model.prefill(jnp.zeros((2, 4), jnp.int32), cache, jnp.asarray([1, 2, 3]))
  with pytest.raises(ValueError, match="2 rows"):
    model.decode_step(jnp.zeros((3,), jnp.int32), cache)
