"""Sampling rules and the reference generation loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.inference.generate import generate
from lloglin.inference.sampling import sample_token
from lloglin.models import ModelConfig, build_model

LOGITS = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))


def draws(n=400, **kw):
  keys = jax.random.split(jax.random.key(0), n)
  return np.asarray(jax.vmap(lambda k: sample_token(LOGITS, k, **kw)[0])(keys))


def test_greedy_is_argmax():
  assert int(sample_token(LOGITS, jax.random.key(0))[0]) == 0


def test_top_k_keeps_only_the_k_best():
  assert set(draws(top_k=2, temperature=1.0)) == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
  assert set(draws(top_p=0.7, temperature=1.0)) == {0, 1}  # 0.5 < 0.7 <= 0.8
  assert set(draws(top_p=0.5, temperature=1.0)) == {0}


def test_temperature_sampling_follows_the_distribution():
  counts = np.bincount(draws(n=4000, temperature=1.0), minlength=4) / 4000
  np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_bad_sampling_arguments():
  with pytest.raises(ValueError, match="top_p"):
    sample_token(LOGITS, jax.random.key(0), temperature=1.0, top_p=0.0)


def test_generate_is_seeded_streams_and_stops():
  model = build_model(ModelConfig(vocab_size=20, d_model=16, num_layers=1, num_heads=2,
                                  num_kv_heads=2, head_dim=8, mlp_dim=32, max_seq_len=32))
  a = generate(model, [1, 2, 3], 10, seed=1, temperature=1.0)
  assert a == generate(model, [1, 2, 3], 10, seed=1, temperature=1.0) and len(a) == 10
  streamed = []
  b = generate(model, [1, 2, 3], 10, seed=1, temperature=1.0, stop_tokens=[a[3]],
               on_token=streamed.append)
  assert b == a[:a.index(a[3]) + 1] == streamed
  greedy = generate(model, [1, 2, 3], 1)
  assert greedy == [int(jnp.argmax(model(jnp.asarray([[1, 2, 3]]))[0, -1]))]
  with pytest.raises(ValueError, match="max_seq_len"):
    generate(model, [1], 40)
