"""Property: top-k / top-p sampling only ever draws tokens the rules allow (float64 oracle)."""

import jax
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lloglin.inference.sampling import sample_token

DRAWS = 64


def allowed_tokens(logits_V, *, temperature, top_k, top_p):
  """Top-k keeps the tokens at or above the k-th largest logit; top-p then keeps a token iff the
  probability of the tokens strictly more likely than it is < top_p (ties stay together)."""
  z = np.asarray(logits_V, np.float64) / temperature
  allowed = z >= np.sort(z)[::-1][top_k - 1] if top_k else np.ones(z.shape, bool)
  p = np.where(allowed, np.exp(z - z.max()), 0.0)
  p /= p.sum()
  above = np.array([p[p > p_i].sum() for p_i in p])
  assume(np.all(np.abs(above - top_p) > 1e-4))  # no token within float32 rounding of the cut
  return allowed & (above < top_p)


@settings(max_examples=30, deadline=None)
@given(logits_BV=hnp.arrays(np.float32, (4, 10),  # one shape: compiled once
                            elements=st.integers(-8, 8).map(lambda i: i / 2)),  # exact ties
       temperature=st.sampled_from([0.5, 1.0, 2.0]), top_k=st.sampled_from([0, 1, 3, 10]),
       top_p=st.sampled_from([0.3, 0.6, 0.9, 1.0]), seed=st.integers(0, 2**16))
def test_samples_stay_inside_the_allowed_set(logits_BV, temperature, top_k, top_p, seed):
  keys = jax.random.split(jax.random.key(seed), DRAWS)
  tokens_NB = np.asarray(jax.vmap(lambda key: sample_token(
      logits_BV, key, temperature=temperature, top_k=top_k, top_p=top_p))(keys))
  for b, logits_V in enumerate(logits_BV):
    allowed = allowed_tokens(logits_V, temperature=temperature, top_k=top_k, top_p=top_p)
    drawn = set(tokens_NB[:, b].tolist())
    assert drawn <= set(np.flatnonzero(allowed).tolist()), (drawn, allowed)
