"""DecoderLM.probe: hidden states at every layer, and steering in the forward pass.

Every mixer and residual mode: probing leaves the logits as they are, and the logit lens of the
semantic_hub suite (Eq. 2) at the last layer with the final norm is the model's own prediction.
Steering (its code is the residual stack's, the same for every mixer): strength 0 changes
nothing, and a vector at layer L changes no stream below L and no earlier position. Decoding:
tests/inference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.evals.semantic_hub.analysis import logit_lens
from lloglin.models import build_model
from lloglin.models.decoder import steer
from tests.inference.helpers import tiny_config
from tests.inference.test_decode import PACKAGE_MIXERS

CASES = [(m, "standard", 1) for m in PACKAGE_MIXERS] + [
    ("attention", mode, 2) for mode in ("ladder", "parallel", "desync")]
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)), jnp.int32)


@jax.jit
def plain_and_probed(model, tokens_BT):
  return model(tokens_BT), model.probe(tokens_BT, sites=("resid", "mixer", "mlp"))


@pytest.mark.parametrize("pattern, mode, layers", CASES)
def test_probe_keeps_the_logits_and_its_top_layer_read_by_the_head_is_them(pattern, mode, layers):
  model = build_model(tiny_config(pattern, num_layers=layers, residual_mode=mode, max_seq_len=32))
  ref_BTV, out = plain_and_probed(model, TOKENS)
  np.testing.assert_allclose(out["logits"], ref_BTV, rtol=1e-6, atol=1e-6)
  L = layers
  assert out["resid"].shape == (L + 1, 2, 12, 32)
  assert out["mixer"].shape == out["mlp"].shape == (L, 2, 12, 32)
  np.testing.assert_array_equal(out["resid"][0], model.embed(TOKENS))
  if mode != "ladder":  # one device: each block adds its mixer's and its MLP's outputs
    np.testing.assert_allclose(out["resid"][1:], out["resid"][:-1] + out["mixer"] + out["mlp"],
                               rtol=1e-5, atol=1e-5)
  lens_LBTV = logit_lens(model, out["resid"], final_norm=True)  # Eq. 2 at every layer
  np.testing.assert_allclose(lens_LBTV[-1], jax.nn.log_softmax(ref_BTV), rtol=1e-5, atol=1e-5)


@jax.jit
def steered_probes(model, tokens_BT, index_BP, steerings):
  """A probe of every position, one of positions index_BP, and one under each steering."""
  sites = ("resid", "mlp")
  return (model.probe(tokens_BT, sites=sites), model.probe(tokens_BT, sites=sites,
                                                           index_BP=index_BP),
          [model.probe(tokens_BT, steering=s) for s in steerings])


@pytest.mark.parametrize("mode", ["standard", "ladder"])
def test_steering_changes_nothing_at_strength_0_and_nothing_below_its_layer(mode):
  """Also: index_BP picks the recorded positions."""
  model = build_model(tiny_config("attention", num_layers=2, residual_mode=mode, max_seq_len=32))
  vector = np.random.default_rng(1).normal(size=32).astype(np.float32)
  index_BP = jnp.asarray([[9, 0], [3, 3]], jnp.int32)
  out, picked, (zero, steered, top) = steered_probes(model, TOKENS, index_BP, [
      steer(vector, layer=1, strength=0.0), steer(vector, layer=1, strength=3.0, start=4),
      steer(vector, layer=2, strength=2.0, stop=[5, 1])])
  for key in ("resid", "logits"):
    np.testing.assert_array_equal(zero[key], out[key])
  np.testing.assert_array_equal(steered["resid"][0], out["resid"][0])  # below the layer
  np.testing.assert_array_equal(steered["resid"][1:, :, :4], out["resid"][1:, :, :4])  # earlier
  np.testing.assert_allclose(steered["resid"][1, :, 4:], out["resid"][1, :, 4:] + 3 * vector,
                             rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(steered["logits"][:, :4], out["logits"][:, :4])
  assert np.abs(steered["logits"][:, 4:] - out["logits"][:, 4:]).min(axis=-1).max() > 0
  # layer == num_layers: after the last block, before the final norm; per-row stop.
  np.testing.assert_array_equal(top["resid"][:2], out["resid"][:2])
  shifted = out["resid"][2] + 2.0 * (np.arange(12) < np.array([[5], [1]]))[..., None] * vector
  np.testing.assert_allclose(top["resid"][2], shifted, rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(top["logits"], model.logits(model.final_norm(shifted)), rtol=1e-5,
                             atol=1e-5)
  take = lambda x_BT: np.stack([x_BT[b, index_BP[b]] for b in range(2)])  # -> [B, P, ...]
  np.testing.assert_allclose(picked["logits"], take(out["logits"]), rtol=1e-6, atol=1e-6)
  for key in ("resid", "mlp"):
    np.testing.assert_allclose(picked[key], np.stack([take(x) for x in out[key]]), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sites=("resid", "attn")), r"sites=\('resid', 'attn'\); expected a subset"),
    (dict(steering=steer(np.ones(32), layer=3)), r"steering layer=3; expected 0\.\.2"),
    (dict(steering=steer(np.ones(16), layer=1)), r"steering.vector_D: expected shape \(32,\)"),
    (dict(index_BP=jnp.zeros((3, 1), jnp.int32)), r"index_BP: expected \[B=1, P\]"),
])
def test_probe_arguments_are_checked(kwargs, match):
  model = build_model(tiny_config("attention", num_layers=2, max_seq_len=32))
  with pytest.raises(ValueError, match=match):
    model.probe(jnp.zeros((1, 4), jnp.int32), **kwargs)


def test_mlp_site_needs_an_mlp_and_a_steering_vector_is_one_vector():
  model = build_model(tiny_config("attention", num_layers=1, mlp_dim=0, max_seq_len=32))
  with pytest.raises(ValueError, match=r"without 'mlp' \(model.mlp_dim=0"):
    model.probe(jnp.zeros((1, 4), jnp.int32), sites=("mlp",))
  with pytest.raises(ValueError, match=r"vector_D: expected one vector \[d_model\]"):
    steer(np.ones((2, 32)), layer=0)
