"""Imports point down the floors of the package (CONTRIBUTING.md, "Layers of the package").

Every module under lloglin/ and pallas_kernels/ is parsed with `ast`; each of its imports (lazy
ones inside functions included) must name a module on the importer's floor or below, and the
floors below data (models and under) import neither ml_collections nor tensorflow_datasets (the
GPU machines lack them). The data floor sits below training / evals / inference, so a data source
reaching up into a suite (even lazily, inside a function) is caught.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The floors, lowest first: a module may import from its own floor and the floors below it.
# An entry names a package and everything inside it; "lloglin" alone is the package root.
FLOORS = (
    ("lloglin", "lloglin.ops"),   # the package root (its __version__; it imports nothing), ops
    ("pallas_kernels", "lloglin.parallel"),              # kernels; meshes, sharding, start-up
    ("lloglin.layers",),                                 # NNX modules, mixers by name
    ("lloglin.models",),                                 # assembled models
    ("lloglin.data", "lloglin.optim"),                   # data sources; optimizers, adapters
    ("lloglin.training", "lloglin.evals", "lloglin.inference"),  # what trains, evaluates, serves
)
# Lowest floor whose modules may import these (data and above: the data floor reads TFDS).
CONFIG_AND_DATASET_FLOOR = 4
CONFIG_AND_DATASET_PACKAGES = ("ml_collections", "tensorflow_datasets")


def floor_of(module: str) -> int | None:
  """The floor of a dotted module name (the longest matching entry), or None outside FLOORS."""
  best, best_len = None, -1
  for floor, packages in enumerate(FLOORS):
    for package in packages:
      inside = module == package or (package != "lloglin" and module.startswith(package + "."))
      if inside and len(package) > best_len:
        best, best_len = floor, len(package)
  return best


def imported_modules(module: str, source: str, is_package: bool = False):
  """(line, dotted name) of every import in `source`, the module `module`; `from X import Y`
  gives X.Y (Y may be a submodule), relative imports are resolved against the module's
  package."""
  package = module if is_package else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
      for alias in node.names:
        yield node.lineno, f"{base}.{alias.name}"


def layering_errors(module: str, source: str, is_package: bool = False) -> list[str]:
  """What in `source` (the module `module`) breaks the floors, one line each."""
  floor = floor_of(module)
  if floor is None:
    return [f"{module}: not in FLOORS (tests/test_layering.py); place its package on a floor"]
  errors = []
  for line, name in imported_modules(module, source, is_package):
    top = name.split(".")[0]
    if top in CONFIG_AND_DATASET_PACKAGES and floor < CONFIG_AND_DATASET_FLOOR:
      errors.append(f"{module}:{line} imports {top}, which only the data floor and above "
                    f"may import")
    if top not in ("lloglin", "pallas_kernels"):
      continue
    target = floor_of(name)
    if target is None or target > floor:
      where = "outside FLOORS" if target is None else f"floor {target} {FLOORS[target]}"
      errors.append(f"{module}:{line} (floor {floor} {FLOORS[floor]}) imports {name}, {where}")
  return errors


def package_modules():
  for root in ("lloglin", "pallas_kernels"):
    for path in sorted((ROOT / root).rglob("*.py")):
      parts = path.relative_to(ROOT).with_suffix("").parts
      is_package = parts[-1] == "__init__"
      yield ".".join(parts[:-1] if is_package else parts), path, is_package


def test_every_import_points_down_a_floor():
  modules = list(package_modules())
  assert len(modules) > 50  # the scan found the package
  errors = [e for module, path, is_package in modules
            for e in layering_errors(module, path.read_text(), is_package)]
  assert not errors, "upward imports:\n" + "\n".join(errors)


@pytest.mark.parametrize("module, source, expected", [
    ("lloglin.ops.gdn", "from lloglin.ops import hierarchy", None),
    ("pallas_kernels.gdn.chunked", "from lloglin.ops import gdn", None),
    ("lloglin.inference.tp_decode", "from lloglin.models import ladder", None),
    ("lloglin.parallel.sharding", "def f():\n  from lloglin.layers import attention",
     "imports lloglin.layers.attention"),
    ("lloglin.data.scenes", "def f():\n  from lloglin.evals.negbench.finetune import SOURCES",
     "imports lloglin.evals.negbench.finetune.SOURCES"),
    ("lloglin.evals.negbench.suite", "from lloglin.data.negbench import Annotations", None),
    ("lloglin.ops.gdn", "import pallas_kernels.gdn", "imports pallas_kernels.gdn"),
    ("lloglin.models.decoder", "from ..training import trainer", "imports lloglin.training"),
    ("lloglin.ops.gdn", "from lloglin import models", "imports lloglin.models"),
    ("lloglin.layers.gdn", "import ml_collections", "imports ml_collections"),
    ("lloglin.nowhere.x", "", "not in FLOORS"),
])
def test_the_check_reports_what_breaks_the_floors(module, source, expected):
  errors = layering_errors(module, source)
  if expected is None:
    assert errors == []
  else:
    assert len(errors) == 1 and expected in errors[0], errors
