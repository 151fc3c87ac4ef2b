"""Cached decoding equals the full forward: every registered mixer, and a hybrid ladder model.

One batch of right-padded prompts of lengths 512, 70, 63 and 1 (chunk 64: ends mid-chunk, at a
chunk boundary - 1, and after one token) goes through DecoderLM.prefill, then 256 tokens per row
through decode_step (one lax.scan, teacher-forced). The logits at every one of these positions
must equal the full forward's of the row alone (the forward is causal, so row b's logits at
positions < length_b + 256 only see its own tokens): float32, error <= 1e-4 of the logit scale
(docs/correctness.md#decode-against-the-full-forward). 512 + 256 tokens cross the Fenwick carries
up to 2^9.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.layers import mixer_names
from lloglin.models import build_model
from lloglin.models.decoder import steer
from pallas_kernels import path as pallas_path
from tests.inference.helpers import assert_close_to_scale, tiny_config

LENGTHS, NEW = (512, 70, 63, 1), 256


@jax.jit
def forward_and_decode(model, tokens_BT, lengths_B):
  """(full-forward logits [B, T, V], logits [B, NEW + 1, V] at positions lengths_B - 1 + i from
  prefill (i = 0) and decode_step)."""
  B, T = tokens_BT.shape
  ref_BTV = model(tokens_BT)
  cache = model.init_cache(B, T)
  first_BV, cache = model.prefill(tokens_BT[:, :max(LENGTHS)], cache, lengths_B)

  def step(cache, i):
    tokens_B = tokens_BT[jnp.arange(B), lengths_B + i]
    logits_BV, cache = model.decode_step(tokens_B, cache)
    return cache, logits_BV

  _, logits_NBV = jax.lax.scan(step, cache, jnp.arange(NEW))
  return ref_BTV, jnp.concatenate([first_BV[:, None], jnp.moveaxis(logits_NBV, 0, 1)], axis=1)


# The package's mixers (test modules register toy mixers named test_*, without decode caches).
PACKAGE_MIXERS = [m for m in mixer_names() if not m.startswith("test_")]


@pytest.mark.parametrize("pattern, mode, layers", [(m, "standard", 1) for m in PACKAGE_MIXERS] + [
    ("mamba2,attention", "ladder", 2)])
def test_decode_logits_equal_the_full_forward(pattern, mode, layers):
  model = build_model(tiny_config(pattern, residual_mode=mode, num_layers=layers))
  T = max(LENGTHS) + NEW
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (len(LENGTHS), T)), jnp.int32)
  lengths = jnp.asarray(LENGTHS, jnp.int32)
  ref_BTV, decoded_BNV = forward_and_decode(model, tokens, lengths)
  positions_BN = lengths[:, None] - 1 + jnp.arange(NEW + 1)
  assert_close_to_scale(decoded_BNV, jnp.take_along_axis(ref_BTV, positions_BN[..., None], 1))


@pytest.mark.parametrize("pattern", ["mamba2", "loglinear_mamba2", "gdn", "loglinear_gdn",
                                     "path", "path_fox"])
def test_prefill_through_the_pallas_kernels(pattern, monkeypatch):
  """mixer_impl='pallas' (interpret mode here): prefill runs the kernels, its final states (PaTH:
  its keys moved to each row's end) included, and decoding after it still equals the full
  forward (shorter than above: the interpreter is slow)."""
  kernel_calls = []  # return_k_cache of each PaTH kernel call
  if pattern.startswith("path"):  # head dim 16: the smallest the PaTH kernel tiles
    kernel = pallas_path.path_attention

    def recording_kernel(*args, **kwargs):
      kernel_calls.append(kwargs.get("return_k_cache", False))
      return kernel(*args, **kwargs)
    monkeypatch.setattr(pallas_path, "path_attention", recording_kernel)
  model = build_model(tiny_config(pattern, mixer_impl="pallas", chunk_size=16,
                                  head_dim=16 if pattern.startswith("path") else 8))
  lengths = jnp.asarray([70, 33, 1], jnp.int32)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (3, 86)), jnp.int32)

  @jax.jit
  def run(model, tokens_BT):
    ref_BTV = model(tokens_BT)
    first_BV, cache = model.prefill(tokens_BT[:, :70], model.init_cache(3, 86), lengths)

    def step(cache, i):
      logits_BV, cache = model.decode_step(tokens_BT[jnp.arange(3), lengths + i], cache)
      return cache, logits_BV
    _, logits_NBV = jax.lax.scan(step, cache, jnp.arange(16))
    return ref_BTV, jnp.concatenate([first_BV[:, None], jnp.moveaxis(logits_NBV, 0, 1)], 1)

  ref_BTV, decoded_BNV = run(model, tokens)
  positions_BN = lengths[:, None] - 1 + jnp.arange(17)
  assert_close_to_scale(decoded_BNV, jnp.take_along_axis(ref_BTV, positions_BN[..., None], 1))
  if pattern.startswith("path"):  # the forward and the prefill (with the key cache) took it
    assert sorted(kernel_calls) == [False, True]


def test_steered_decoding_equals_the_steered_forward_and_keeps_the_caches_below_its_layer():
  """A steering at layer 1 through prefill and decode_step gives the logits of the steered full
  forward (DecoderLM.probe); the layer-0 cache is the one of strength 0, the layer-1 cache is
  not."""
  model = build_model(tiny_config("mamba2,attention", num_layers=2, max_seq_len=64))
  lengths = jnp.asarray([9, 5], jnp.int32)
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 64, (2, 24)), jnp.int32)

  @jax.jit
  def run(model, tokens_BT, steering):
    ref_BTV = model.probe(tokens_BT, steering=steering)["logits"]
    first_BV, cache = model.prefill(tokens_BT[:, :9], model.init_cache(2, 24), lengths,
                                    steering=steering)

    def step(cache, i):
      logits_BV, cache = model.decode_step(tokens_BT[jnp.arange(2), lengths + i], cache,
                                           steering=steering)
      return cache, logits_BV
    cache, logits_NBV = jax.lax.scan(step, cache, jnp.arange(8))
    return ref_BTV, jnp.concatenate([first_BV[:, None], jnp.moveaxis(logits_NBV, 0, 1)], 1), cache

  vector = np.random.default_rng(3).normal(size=32).astype(np.float32)
  positions_BN = lengths[:, None] - 1 + jnp.arange(9)
  caches = []
  for strength in (0.0, 3.0):
    ref_BTV, decoded_BNV, cache = run(model, tokens, steer(vector, layer=1, strength=strength,
                                                           start=3))
    assert_close_to_scale(decoded_BNV, jnp.take_along_axis(ref_BTV, positions_BN[..., None], 1))
    caches.append(cache)
  jax.tree.map(np.testing.assert_array_equal, caches[0].layers[0], caches[1].layers[0])
  assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3 for a, b in zip(
      jax.tree.leaves(caches[0].layers[1]), jax.tree.leaves(caches[1].layers[1])))
