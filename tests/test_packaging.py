"""pyproject.toml against the pinned requirements files and against what the code imports."""

import ast
import importlib.metadata
import pathlib
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PACKAGES = ("lloglin", "pallas_kernels")
# Declared because a dependency imports it without declaring it (see pyproject.toml).
FOR_A_DEPENDENCY = {"importlib-resources"}
MODULE_DISTRIBUTIONS = {m: {canonicalize_name(d) for d in ds}
                        for m, ds in importlib.metadata.packages_distributions().items()}


def by_name(requirements) -> dict:
  """{(canonical name, extras): Requirement}."""
  reqs = [Requirement(r) for r in requirements]
  return {(canonicalize_name(r.name), frozenset(r.extras)): r for r in reqs}


def requirements_file(name: str) -> dict:
  lines = (line.split("#", 1)[0].strip() for line in (ROOT / name).read_text().splitlines())
  return by_name(line for line in lines if line and not line.startswith("-r"))


def imported_modules(*paths) -> dict[str, str]:
  """{top-level module: a file importing it} over the absolute imports of the .py files."""
  found = {}
  for path in paths:
    for file in sorted([path] if path.is_file() else path.rglob("*.py")):
      for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
          names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
          names = [node.module]
        else:
          continue
        for name in names:
          found.setdefault(name.split(".")[0], str(file.relative_to(ROOT)))
  return found


def distributions_of(modules) -> set[str]:
  return set().union(*(MODULE_DISTRIBUTIONS.get(m, set()) for m in modules))


RUNTIME = by_name(PROJECT["dependencies"])
EXTRAS = {extra: by_name(reqs) for extra, reqs in PROJECT["optional-dependencies"].items()}


@pytest.mark.parametrize("file, declared", [("requirements.txt", RUNTIME),
                                            ("requirements-dev.txt", EXTRAS["dev"]),
                                            ("requirements-gpu.txt", EXTRAS["gpu"])],
                         ids=["requirements.txt", "requirements-dev.txt", "requirements-gpu.txt"])
def test_requirements_files_pin_inside_the_declared_ranges(file, declared):
  pinned = requirements_file(file)
  assert set(pinned) == set(declared), f"{file} and pyproject.toml list different packages"
  for key, req in pinned.items():
    for spec in req.specifier:
      assert spec.operator == "==", f"{file}: {req} (pins use ==)"
      assert declared[key].specifier.contains(spec.version, prereleases=True), (
          f"{file} pins {req}, outside pyproject.toml's {declared[key]}")


def test_every_runtime_dependency_is_imported_by_the_code():
  used = distributions_of(imported_modules(*(ROOT / p for p in PACKAGES),
                                           ROOT / "train.py", ROOT / "eval.py"))
  unused = {name for name, _ in RUNTIME} - used - FOR_A_DEPENDENCY
  assert not unused, f"{sorted(unused)}: declared, never imported by the package or the scripts"


def test_every_dev_dependency_is_used_by_the_tests():
  used = distributions_of(imported_modules(ROOT / "tests"))
  if "pytest -n" in (ROOT / "Makefile").read_text():
    used.add("pytest-xdist")
  unused = {name for name, _ in EXTRAS["dev"]} - used
  assert not unused, f"{sorted(unused)}: in the dev extra, used by no test"


def test_every_third_party_import_of_the_package_is_declared():
  """Also keeps configs/, benchmarks/ and tests/ (not in the wheel) out of the package."""
  declared = {name for name, _ in RUNTIME}
  for module, file in imported_modules(*(ROOT / p for p in PACKAGES)).items():
    if module in sys.stdlib_module_names or module in PACKAGES:
      continue
    dists = MODULE_DISTRIBUTIONS.get(module, set())
    assert dists & declared, (f"{file} imports {module}, which no declared runtime dependency "
                              f"provides (installed from: {sorted(dists) or 'nowhere'})")
