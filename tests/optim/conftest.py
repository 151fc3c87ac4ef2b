"""tests/optim compile many small programs once each: compile them without most XLA
optimizations (several times faster on CPU; every comparison runs both sides under the same
setting)."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _fast_compile():
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
