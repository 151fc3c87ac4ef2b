"""Test-wide setup: 8 fake CPU devices (for sharding tests), no GPU memory preallocation, the
GPU marker, and fixtures shared across folders (real text, a tiny trained run)."""

import fcntl
import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# `pytest -n 4 -m gpu` runs four processes on one GPU: each would otherwise reserve 75% of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import run_script  # noqa: E402


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


@pytest.fixture(scope="session")
def tiny_lm_run(tmp_path_factory):
  """Workdir of configs/mqar.py:tiny trained on a small text corpus (byte tokenizer, seq_len 32).

  Trained once per test session: pytest-xdist workers share it through a lock file in the
  session's temporary folder."""
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    shared = shared.parent  # the session's folder, above every worker's own
  work = shared / "tiny_lm_run"
  with open(shared / "tiny_lm_run.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (work / "export").is_dir():
      text = shared / "tiny_corpus.txt"
      text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
      result = run_script("train.py", "--config", "configs/mqar.py:tiny", f"--workdir={work}",
                          "--config.data.source=text", f"--config.data.path={text}",
                          "--config.model.max_seq_len=64")
      assert result.returncode == 0, result.stderr[-3000:]
  return work
