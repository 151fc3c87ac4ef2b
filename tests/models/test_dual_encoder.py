"""The dual encoder: shapes, unit-norm embeddings and scaled cosine logits, end-of-text pooling
for every padding pattern (attention and GDN text towers), a bidirectional image tower, and bad
input."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lloglin.models import ModelConfig
from lloglin.models.dual_encoder import DualEncoderConfig, build_dual_encoder

L = 6
VOCAB = 11
ENCODER = dict(image_size=8, patch_size=4, channels=3, vision_width=16, vision_depth=1,
               vision_heads=2, vision_mlp_dim=32, embed_dim=8)


def text_config(layer_pattern="attention"):
  return ModelConfig(vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2, num_kv_heads=2,
                     head_dim=8, mlp_dim=32, max_seq_len=L, layer_pattern=layer_pattern,
                     chunk_size=4)


@pytest.fixture(scope="module")
def model():
  return build_dual_encoder(text_config(), seed=0, **ENCODER)


encode_text = nnx.jit(lambda m, tokens, lengths: m.encode_text(tokens, lengths))
encode_image = nnx.jit(lambda m, images: m.encode_image(images))


def images(n, seed=0):
  return np.random.default_rng(seed).random((n, 8, 8, 3), dtype=np.float32)


def test_logits_are_scaled_cosines_of_unit_embeddings(model):
  tokens = np.random.default_rng(1).integers(0, VOCAB, (2, L))
  lengths = np.array([3, L])
  forward = nnx.jit(lambda m, x, t, n: (m(x, t, n), m.encode_image(x), m.encode_text(t, n)))
  logits, img, txt = map(np.asarray, forward(model, images(3), tokens, lengths))
  assert logits.shape == (3, 2) and img.shape == (3, 8) and txt.shape == (2, 8)
  np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(txt, axis=-1), 1, rtol=1e-5)
  assert float(model.scale()) == pytest.approx(1 / 0.07, rel=1e-5)  # CLIP's init
  np.testing.assert_allclose(logits, img @ txt.T / 0.07, rtol=1e-4, atol=1e-5)


def test_logit_scale_is_clamped_at_100():
  m = build_dual_encoder(text_config(), **ENCODER)
  m.logit_scale[...] = jnp.asarray(math.log(1000.0))
  assert float(m.scale()) == pytest.approx(100.0, rel=1e-5)


@pytest.mark.parametrize("layer_pattern", ["attention", "gdn"])
def test_text_embedding_is_read_at_the_end_of_text_token(model, layer_pattern):
  """Row k has k + 1 tokens (every padding pattern of L positions): garbage after its length
  leaves its embedding unchanged; a different end-of-text token changes it."""
  m = model if layer_pattern == "attention" else build_dual_encoder(text_config(layer_pattern),
                                                                    **ENCODER)
  rng = np.random.default_rng(2)
  lengths = np.arange(1, L + 1)
  tokens = rng.integers(0, VOCAB, (L, L))
  garbage = np.where(np.arange(L) < lengths[:, None], tokens, rng.integers(0, VOCAB, (L, L)))
  other_eot = tokens.copy()
  other_eot[np.arange(L), lengths - 1] = (tokens[np.arange(L), lengths - 1] + 1) % VOCAB
  assert (garbage != tokens).any(axis=1)[:-1].all()  # every padded row got new padding
  base, same, other = np.split(np.asarray(encode_text(
      m, np.concatenate([tokens, garbage, other_eot]), np.tile(lengths, 3))), 3)
  np.testing.assert_allclose(same, base, atol=1e-6)
  moved = np.abs(other - base).max(axis=1)
  assert (moved > 1e-4).all(), moved


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_image_tower_is_bidirectional(pooling):
  """A change to any single patch moves the pooled embedding: with causal attention the class
  token (position 0) would see none of them."""
  m = build_dual_encoder(text_config(), **dict(ENCODER, pooling=pooling))
  x = np.repeat(images(1), 5, axis=0)  # row 0 as it is, row 1 + 2r + c with patch (r, c) changed
  for r in range(2):
    for c in range(2):
      x[1 + 2 * r + c, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 1 - x[0, 4 * r:4 * r + 4,
                                                                  4 * c:4 * c + 4]
  out = np.asarray(encode_image(m, x))
  assert (np.abs(out[1:] - out[0]).max(axis=1) > 1e-4).all()


@pytest.mark.parametrize("call, pattern", [
    (lambda m: m.encode_image(np.zeros((2, 8, 8, 1), np.float32)), r"images: .*\[B, 8, 8, 3\]"),
    (lambda m: m.encode_image(np.zeros((2, 16, 16, 3), np.float32)), r"images: .*\(2, 16, 16, 3\)"),
    (lambda m: m.encode_image(np.zeros((8, 8, 3), np.float32)), r"images: expected shape"),
    (lambda m: m.encode_image(np.zeros((1, 8, 8, 3), np.uint8)), r"images: .*floating"),
    (lambda m: m.encode_text(np.zeros((2, L), np.int32), np.ones(3, np.int32)),
     r"lengths: .*\[B=2\]"),
    (lambda m: m.encode_text(np.zeros((2, L), np.int32), np.array([0, 1])),
     r"lengths: value 0 .*1 <= length <= L=6"),
    (lambda m: m.encode_text(np.zeros((2, L), np.int32), np.array([2, L + 1])),
     r"lengths: value 7 .*1 <= length <= L=6"),
    (lambda m: m.encode_text(np.zeros(L, np.int32), np.array([2])), r"tokens: .*\[B, L\]"),
])
def test_bad_input_names_the_argument(model, call, pattern):
  with pytest.raises(ValueError, match=pattern):
    call(model)


@pytest.mark.parametrize("change, pattern", [
    (dict(pooling="max"), r"encoder.pooling='max'"),
    (dict(patch_size=3), r"encoder.patch_size=3 must divide encoder.image_size=8"),
    (dict(vision_heads=3), r"encoder.vision_heads=3 must divide encoder.vision_width=16"),
    (dict(embed_dim=0), r"encoder.embed_dim=0; expected a positive int"),
    (dict(patches=4), r"unknown encoder config key\(s\) \['patches'\]"),
])
def test_bad_config_names_the_field(change, pattern):
  with pytest.raises(ValueError, match=pattern):
    DualEncoderConfig.from_dicts(text_config(), dict(ENCODER, **change))
