"""The reward model reads its score at the last non-padding token, whatever the mixer."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lloglin.models.reward import build_reward_model
from tests.models.test_decoder import tiny_config


@pytest.mark.parametrize("mixer", ["attention", "gdn"])
def test_reward_is_read_at_the_last_non_padding_token(mixer):
  model = build_reward_model(tiny_config(layer_pattern=mixer, num_layers=1, num_kv_heads=4))
  lengths = np.array([5, 9, 12])
  T = 12
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 50, (3, T)).astype(np.int32)
  segment_ids = (np.arange(T) < lengths[:, None]).astype(np.int32)
  tokens[segment_ids == 0] = 0

  forward = nnx.jit(lambda m, t, s: m(t, segment_ids_BT=s))

  def rewards(tokens_BT, segment_ids_BT):
    return np.asarray(forward(model, jnp.asarray(tokens_BT), jnp.asarray(segment_ids_BT)))

  base = rewards(tokens, segment_ids)
  assert base.shape == (3,) and np.isfinite(base).all()
  padded = rewards(np.pad(tokens, ((0, 0), (0, 4))), np.pad(segment_ids, ((0, 0), (0, 4))))
  np.testing.assert_allclose(padded, base, rtol=1e-5, atol=1e-6)
  after = tokens.copy()
  after[0, lengths[0]:] = 7  # tokens in row 0's padding
  np.testing.assert_allclose(rewards(after, segment_ids), base, rtol=1e-5, atol=1e-6)
  last = tokens.copy()
  last[np.arange(3), lengths - 1] = (last[np.arange(3), lengths - 1] + 1) % 50
  assert (np.abs(rewards(last, segment_ids) - base) > 1e-6).all()


def test_trunk_has_the_decoder_parameters_and_no_lm_head():
  cfg = tiny_config(tie_embeddings=False)
  paths = {p for p, _ in nnx.to_flat_state(nnx.state(build_reward_model(cfg), nnx.Param))}
  assert {p[0] for p in paths} == {"trunk", "head"}
  assert {p[1] for p in paths if p[0] == "trunk"} == {"embed", "blocks", "final_norm"}
  assert {p[1:] for p in paths if p[0] == "head"} == {("kernel",), ("bias",)}


def test_a_zeroed_head_scores_every_row_equal():
  """With the head's kernel zero, the reward is its bias whatever the tokens and lengths."""
  model = build_reward_model(tiny_config(num_layers=1, num_kv_heads=4))
  model.head.kernel.set_value(jnp.zeros_like(model.head.kernel.get_value()))
  model.head.bias.set_value(jnp.full_like(model.head.bias.get_value(), 0.25))
  rng = np.random.default_rng(1)
  tokens = rng.integers(1, 50, (6, 10)).astype(np.int32)
  segment_ids = (np.arange(10) < rng.integers(1, 11, 6)[:, None]).astype(np.int32)
  rewards = np.asarray(model(jnp.asarray(tokens), segment_ids_BT=jnp.asarray(segment_ids)))
  np.testing.assert_array_equal(rewards, np.full(6, 0.25, np.float32))
