"""Sampling rules: greedy, top-k, top-p, temperature, argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lloglin.inference.sampling import sample_token

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
