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


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def shakespeare_path():
  """Path to ../shared/data/tinyshakespeare.txt; skips the test when it is absent."""
  path = os.path.abspath(os.path.join(SHARED_DATA, "tinyshakespeare.txt"))
  if not os.path.exists(path):
    pytest.skip(f"{path} not present (real text is only on the project's machines)")
  return path
