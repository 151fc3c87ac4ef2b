"""Test-wide setup: 8 fake CPU devices (for sharding tests), no GPU memory preallocation, and the
GPU marker."""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# `pytest -n 4 -m gpu` runs four processes on one GPU: each would otherwise reserve 75% of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
  if jax.default_backend() == "gpu":
    return
  skip_gpu = pytest.mark.skip(reason="needs a GPU")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip_gpu)


SHAKESPEARE_ENV = "LLOGLIN_TINYSHAKESPEARE"


@pytest.fixture
def shakespeare_path():
  """A local copy of the tiny_shakespeare text, named by $LLOGLIN_TINYSHAKESPEARE; the test is
  skipped without it (the repository ships no corpus, and CI has no network for tfds)."""
  path = os.environ.get(SHAKESPEARE_ENV, "")
  if not path or not os.path.exists(path):
    pytest.skip(f"set {SHAKESPEARE_ENV} to a copy of tinyshakespeare.txt (got {path!r})")
  return os.path.abspath(path)
