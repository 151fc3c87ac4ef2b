"""Every notebook runs top to bottom, each .ipynb is its jupytext source without outputs, and all
share one Colab install cell.

The notebooks run as Jupyter runs them: nbclient executes the committed .ipynb cell by cell in an
IPython kernel of this Python, started in notebooks/ (the working directory, '', is on the
kernel's sys.path, so lloglin, configs/ and benchmarks/ import once a notebook has moved to the
repository root, installed or not). TINY_ENV selects their tiny sizes and the CPU.
"""

import glob
import os

import jupytext
import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
SOURCES = sorted(glob.glob(os.path.join(NOTEBOOKS, "*.py")))
# The one switch every notebook reads for its test sizes; the kernels see one CPU device. At tiny
# sizes XLA's compile time is most of a notebook's: these flags make CPU compiles a third cheaper
# (less optimised code, which tiny programs do not notice).
TINY_ENV = {"LLOGLIN_NOTEBOOK_TINY": "1", "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": ("--xla_backend_optimization_level=0 "
                          "--xla_llvm_disable_expensive_passes=true")}
CELL_TIMEOUT_S = 300


def paired(source: str) -> str:
  return source.removesuffix(".py") + ".ipynb"


def test_every_ipynb_has_a_percent_source():
  """The .py is the notebook's source (what the tests read and reviews diff); an .ipynb alone
  would escape both tests."""
  orphans = [p for p in glob.glob(os.path.join(NOTEBOOKS, "*.ipynb"))
             if not os.path.exists(p.removesuffix(".ipynb") + ".py")]
  assert not orphans, f"{orphans}: write the percent source (jupytext --to py:percent NAME.ipynb)"


@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_ipynb_is_its_source_without_outputs(source):
  assert os.path.exists(paired(source)), f"run: jupytext --sync {source}"
  committed = nbformat.read(paired(source), as_version=4)
  cells = lambda nb: [(c.cell_type, c.source) for c in nb.cells]
  assert cells(committed) == cells(jupytext.read(source)), f"run: jupytext --sync {source}"
  ran = [i for i, c in enumerate(committed.cells)
         if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
  assert not ran, (f"{os.path.basename(paired(source))}: cells {ran} hold outputs or execution "
                   f"counts; rebuild it from its source: jupytext --to ipynb {source}")


def test_one_colab_install_cell_for_all():
  """Every notebook opens in Colab through the same install cell (the code cell that tests for
  google.colab), word for word, so that a fix to one cannot leave the others behind."""
  cells = {}
  for source in SOURCES:
    found = [c.source for c in jupytext.read(source).cells
             if c.cell_type == "code" and "google.colab" in c.source]
    assert len(found) == 1, (f"{os.path.basename(source)}: expected one install cell (testing for "
                             f"google.colab), found {len(found)}")
    cells[os.path.basename(source)] = found[0]
  texts = list(cells.values())
  common = max(set(texts), key=texts.count)
  drifted = sorted(name for name, text in cells.items() if text != common)
  assert not drifted, (f"{drifted}: the Colab install cell differs from the other notebooks' "
                       f"(copy it from {next(n for n, t in cells.items() if t == common)}):\n"
                       f"{common}")


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory):
  """A kernel spec that starts an IPython kernel with this Python (not whatever 'python3' the
  machine's Jupyter paths hold)."""
  kernels = tmp_path_factory.mktemp("kernels")
  write_kernel_spec(kernels / "lloglin-tests")
  return KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_notebook_runs(source, kernel_specs, tmp_path):
  """Files the notebook writes go to a temporary folder (TMPDIR). TINY_ENV replaces the tests'
  XLA_FLAGS (fake devices): a notebook that wants several devices asks for them itself."""
  env = dict(os.environ)
  env.update(TINY_ENV, TMPDIR=str(tmp_path),
             MPLBACKEND="module://matplotlib_inline.backend_inline")
  notebook = nbformat.read(paired(source), as_version=4)
  manager = AsyncKernelManager(kernel_name="lloglin-tests", kernel_spec_manager=kernel_specs)
  client = NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT_S,
                          resources={"metadata": {"path": NOTEBOOKS}})
  client.execute(env=env)
  figures = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
             if "image/png" in o.get("data", {})]
  assert figures, f"{os.path.basename(source)} drew no figure"
