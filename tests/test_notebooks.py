"""Notebooks run top to bottom, and each .ipynb matches its jupytext source."""

import glob
import os
import subprocess
import sys

import jupytext
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.py")))


@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_ipynb_is_in_sync_with_its_source(source):
  paired = jupytext.read(source.replace(".py", ".ipynb"))
  cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]
  assert cells(paired) == cells(jupytext.read(source)), f"run: jupytext --sync {source}"


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_notebook_runs(source):
  """As in Jupyter: it starts in notebooks/ with the working directory ('') on sys.path, so it
  imports lloglin and configs/ without editing sys.path (installed or not)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", QUICKSTART_STEPS="20")
  run_as_main = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
  result = subprocess.run([sys.executable, "-c", run_as_main, source],
                          cwd=os.path.dirname(source), env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
