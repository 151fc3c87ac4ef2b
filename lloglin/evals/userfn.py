"""User functions named in a config: "module:function" or "path/to/file.py:function"."""

import importlib
import importlib.util
import pathlib
from typing import Callable


def import_function(spec: str, *, what: str) -> Callable:
  """The callable that `spec` names; `what` (the config key) goes into the errors."""
  module_name, _, name = spec.rpartition(":")
  if not module_name or not name.isidentifier():
    raise ValueError(f"{what}={spec!r}: expected 'module:function' or 'file.py:function'")
  if module_name.endswith(".py"):
    path = pathlib.Path(module_name)
    if not path.is_file():
      raise FileNotFoundError(f"{what}={spec!r}: no such file {module_name!r}")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ValueError(f"{what}={spec!r}: cannot import module {module_name!r} ({e})") from e
  fn = getattr(module, name, None)
  if not callable(fn):
    raise ValueError(f"{what}={spec!r}: module {module_name!r} has no function {name!r}")
  return fn
