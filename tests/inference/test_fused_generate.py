"""generate(impl='fused'): the fused whole-model decode kernel (interpret mode on CPU) against the
plain decode step on a tiny attention-only model: greedy tokens, teacher-forced logits, sampling,
stop tokens and streaming; 'auto' resolution; clear errors where the kernel does not apply."""

import collections
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lloglin.inference.fused import (FusedStep, fused_cache, fused_decode_supported,
                                     packed_weights)
from lloglin.inference.generate import generate, resolve_decode_impl
from lloglin.layers import registry
from lloglin.layers.registry import on_hopper_gpu
from lloglin.models import build_model
from pallas_kernels.fused_decode import default_backend
from tests.inference.helpers import assert_close_to_scale, tiny_config

PROMPT = [int(t) for t in np.random.default_rng(0).integers(0, 64, 20)]
NEW = 16


@pytest.fixture(scope="module")
def model():
  return build_model(tiny_config("attention", num_layers=2, max_seq_len=128,
                                 attention_impl="xla"), seed=1)


def teacher_forced_logits(model, tokens, fmt):
  """Logits [len(tokens), V] of the plain and the fused step after PROMPT, fed `tokens`."""
  cache = model.prefill(jnp.asarray([PROMPT]), model.init_cache(1, 64))[1]
  weights = packed_weights(model, fmt)
  fused = (weights, jax.jit(FusedStep(interpret=True)), fused_cache(cache, weights.config))
  plain = (model, jax.jit(lambda m, t, c: m.decode_step(t, c)), cache)
  out = []
  for net, step, cache in (plain, fused):
    rows = []
    for t in tokens:
      logits_BV, cache = step(net, jnp.asarray([t], jnp.int32), cache)
      rows.append(np.asarray(logits_BV[0]))
    out.append(np.stack(rows))
  return out


def test_fused_greedy_tokens_and_logits_equal_plain(model):
  [plain] = generate(model, [PROMPT], NEW, impl="plain")
  [fused] = generate(model, [PROMPT], NEW, impl="fused")
  assert len(fused) == NEW and fused == plain
  ref, out = teacher_forced_logits(model, plain, "f32")
  assert_close_to_scale(out, ref, rel=1e-5)  # f32 weights: rounding-level differences only


@pytest.mark.parametrize("fmt, rel", [("bf16", 2e-2), ("int8", 5e-2)])
def test_fused_16_bit_and_int8_logits_stay_close(model, fmt, rel):
  """bf16 rounds activations, int8 also quantises weights: the logits move, within tolerance."""
  ref, out = teacher_forced_logits(model, PROMPT[:4], fmt)
  assert_close_to_scale(out, ref, rel=rel)


def test_fused_stop_tokens_streaming_and_sampling(model):
  [greedy] = generate(model, [PROMPT], NEW, impl="plain")
  stop = greedy[3]
  cut = greedy[:greedy.index(stop) + 1]
  assert generate(model, [PROMPT], NEW, stop_tokens=[stop], impl="fused") == [cut]
  streamed = collections.defaultdict(list)
  again = generate(model, [PROMPT], NEW, stop_tokens=[stop], impl="fused",
                   on_token=lambda row, token: streamed[row].append(token))
  assert again == [cut] and dict(streamed) == {0: cut}
  # Same key, logits equal to rounding: the same draws as the plain step.
  sampling = dict(temperature=0.9, top_k=20, top_p=0.9, seed=3)
  assert (generate(model, [PROMPT], NEW, impl="fused", **sampling)
          == generate(model, [PROMPT], NEW, impl="plain", **sampling))


def test_fused_takes_the_mosaic_kernel_where_it_serves_the_model():
  """A model with 64-row tiles (head_dim 64, widths multiple of 128) decodes through the Mosaic
  GPU kernel (its interpreter here), token for token as the plain step."""
  net = build_model(tiny_config("attention", num_layers=2, max_seq_len=128, d_model=128,
                                num_heads=2, num_kv_heads=1, head_dim=64, mlp_dim=128,
                                attention_impl="xla"), seed=2)
  config = packed_weights(net, "f32").config
  assert default_backend(config, 64, interpret=True) == "mosaic"
  assert default_backend(config, 64) == ("mosaic" if on_hopper_gpu() else "triton")
  assert (generate(net, [PROMPT], 8, impl="fused") == generate(net, [PROMPT], 8, impl="plain"))


def test_weights_are_packed_once_per_model_and_repacked_when_they_change(model):
  weights = packed_weights(model, "f32")
  assert packed_weights(model, "f32") is weights
  other = nnx.clone(model)
  packed = packed_weights(other, "f32")
  other.final_norm.scale[...] = 2 * other.final_norm.scale[...]
  repacked = packed_weights(other, "f32")
  assert repacked is not packed
  np.testing.assert_allclose(repacked.final_norm, 2 * np.asarray(packed.final_norm))


def test_auto_picks_plain_off_hopper_and_for_batches(model):
  assert fused_decode_supported(model) == (True, "")
  assert resolve_decode_impl("auto", model, 2, "bf16") == "plain"
  if not on_hopper_gpu():
    assert resolve_decode_impl("auto", model, 1, "bf16") == "plain"
    assert (generate(model, [PROMPT], NEW, impl="auto")
            == generate(model, [PROMPT], NEW, impl="plain"))


def test_auto_width_limit_holds_for_the_triton_backend_only(model, monkeypatch):
  """'auto' takes the Triton kernel only up to FUSED_AUTO_MAX_D_MODEL and the Mosaic kernel at
  any width (where each was measured faster than the plain step: benchmarks/RESULTS.md, fused
  decode): on a Hopper it takes the narrow test model, not a wide model only the Triton kernel
  serves (head_dim 8), and a wide model the Mosaic kernel serves."""
  # the module, not the `generate` function that lloglin.inference exports under its name
  generate_module = importlib.import_module("lloglin.inference.generate")
  monkeypatch.setattr(registry, "on_hopper_gpu", lambda: True)
  assert resolve_decode_impl("auto", model, 1, "bf16") == "fused"
  width = 2 * generate_module.FUSED_AUTO_MAX_D_MODEL
  wide = build_model(tiny_config(layer_pattern="attention", max_seq_len=128, d_model=width))
  assert resolve_decode_impl("auto", wide, 1, "bf16") == "plain"
  assert resolve_decode_impl("fused", wide, 1, "bf16") == "fused"
  wide_64 = build_model(tiny_config(layer_pattern="attention", max_seq_len=128, d_model=width,
                                    num_heads=2, num_kv_heads=1, head_dim=64, mlp_dim=128))
  assert resolve_decode_impl("auto", wide_64, 1, "bf16") == "fused"


@pytest.mark.gpu
def test_auto_picks_fused_on_hopper_in_gpu_checked_formats(model):
  if not on_hopper_gpu():
    pytest.skip("needs a Hopper GPU")
  assert resolve_decode_impl("auto", model, 1, "bf16") == "fused"
  assert resolve_decode_impl("auto", model, 1, "f32") == "plain"


@pytest.mark.parametrize("config, prompts, message", [
    (dict(layer_pattern="mamba2"), [PROMPT], "layer_pattern='mamba2'"),
    (dict(layer_pattern="attention,mamba2", num_layers=2), [PROMPT], "attention-only"),
    (dict(residual_mode="parallel"), [PROMPT], "residual_mode='parallel'"),
    (dict(head_dim=12), [PROMPT], "head_dim=12"),
    ({}, [PROMPT, PROMPT[:3]], "2 prompts.*batch 1"),
])
def test_fused_where_the_kernel_does_not_apply_raises(config, prompts, message):
  net = build_model(tiny_config(**{"layer_pattern": "attention", "max_seq_len": 128, **config}))
  with pytest.raises(ValueError, match=f"impl='fused': .*{message}"):
    generate(net, prompts, 4, impl="fused")
  assert resolve_decode_impl("auto", net, len(prompts), "bf16") == "plain"


def test_bad_weights_dtype_is_rejected(model):
  with pytest.raises(ValueError, match="weights_dtype='fp8'"):
    generate(model, [PROMPT], 4, impl="fused", weights_dtype="fp8")
