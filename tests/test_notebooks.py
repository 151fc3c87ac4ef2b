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
  env = dict(os.environ, JAX_PLATFORMS="cpu", QUICKSTART_STEPS="20")
  result = subprocess.run([sys.executable, source], cwd=os.path.dirname(source), env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
