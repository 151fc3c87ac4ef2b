"""Evaluation suites by name.

A suite is a package `lloglin/evals/<name>/` whose `__init__` registers a run function:

    @register_suite("name")                       # needs_checkpoint=True: evaluates a trained run
    def run(config, *, checkpoint, out_dir) -> dict:
      ...                                         # tqdm bars (`progress`), PNGs (`save_figure`)
      return results                              # JSON-able; becomes report.json's "results"

`run_suite(name, config, checkpoint=..., out_dir=...)` imports the package on first use, runs it
and writes `out_dir/report.json` (suite, config, checkpoint, environment, results, figures).
The package name is the suite name, so `suite_names()` lists the suites without importing them.
"""

import dataclasses
import importlib
import os
import pkgutil
from typing import Callable

from lloglin.evals.report import write_report


@dataclasses.dataclass(frozen=True)
class Suite:
  """A registered suite: `run(config, *, checkpoint, out_dir) -> results dict`.

  needs_checkpoint: the suite evaluates a trained model (a training workdir, its checkpoints/
  folder or an export); suites that build or train their own toy models get checkpoint=None when
  none is given.
  """
  name: str
  run: Callable[..., dict]
  needs_checkpoint: bool = False


_SUITES: dict[str, Suite] = {}


def register_suite(name: str, *, needs_checkpoint: bool = False):
  """Decorator registering `run` as suite `name` (its package's name)."""
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"register_suite: expected a suite name that is a Python identifier (the "
                     f"package name), got {name!r}")

  def decorator(run):
    old = _SUITES.get(name)
    if old is not None and (old.run.__module__, old.run.__qualname__) != (run.__module__,
                                                                          run.__qualname__):
      raise ValueError(f"suite {name!r} is already registered by "
                       f"{old.run.__module__}.{old.run.__qualname__}")
    _SUITES[name] = Suite(name, run, needs_checkpoint)
    return run

  return decorator


def _packages() -> set[str]:
  """The sub-packages of lloglin/evals/ (each one suite)."""
  return {m.name for m in pkgutil.iter_modules([os.path.dirname(__file__)]) if m.ispkg}


def suite_names() -> list[str]:
  """Every suite: the packages of lloglin/evals/ and any suite registered from elsewhere."""
  return sorted(_packages() | set(_SUITES))


def get_suite(name: str) -> Suite:
  """The suite `name`, importing its package on first use; unknown names -> ValueError."""
  if name not in _SUITES and name in _packages():
    importlib.import_module(f"lloglin.evals.{name}")
    if name not in _SUITES:
      raise ValueError(f"lloglin.evals.{name} registers no suite named {name!r}: decorate its run "
                       f"function with @register_suite({name!r})")
  if name not in _SUITES:
    raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(suite_names())}")
  return _SUITES[name]


def check_run(name: str, config, checkpoint: str | None) -> Suite:
  """Suite `name`, after checking that `config` is its config and a checkpoint is given if it
  needs one (ValueError otherwise)."""
  suite = get_suite(name)
  if config.get("suite") != name:
    raise ValueError(f"config: expected a config of suite {name!r} (its `suite` key, as in "
                     f"configs/{name}.py), got suite={config.get('suite')!r}")
  if suite.needs_checkpoint and not checkpoint:
    raise ValueError(f"checkpoint: suite {name!r} evaluates a trained model; pass a training "
                     f"workdir, its checkpoints/ folder or an export (eval.py --checkpoint DIR)")
  return suite


def run_suite(name: str, config, *, checkpoint: str | None = None, out_dir: str) -> dict:
  """Runs suite `name` with its config (a ConfigDict whose `suite` key is `name`) and writes
  out_dir/report.json; returns the report."""
  suite = check_run(name, config, checkpoint)
  os.makedirs(out_dir, exist_ok=True)
  before = _png_stamps(out_dir)
  results = suite.run(config, checkpoint=checkpoint, out_dir=out_dir)
  figures = sorted(f for f, stamp in _png_stamps(out_dir).items() if before.get(f) != stamp)
  return write_report(out_dir, suite=name, config=config, checkpoint=checkpoint, results=results,
                      figures=figures)


def _png_stamps(out_dir: str) -> dict[str, int]:
  """{file name: mtime in ns} of the PNGs in out_dir: those new or rewritten by a run are its
  figures (a PNG left by an earlier run into the same folder is not)."""
  return {e.name: e.stat().st_mtime_ns for e in os.scandir(out_dir)
          if e.is_file() and e.name.endswith(".png")}
