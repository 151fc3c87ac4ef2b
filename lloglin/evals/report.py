"""What every suite shares: a progress bar, PNG figures and the JSON report.

Build figures with `matplotlib.figure.Figure` rather than pyplot: no global backend to set (a
notebook keeps its inline plots) and nothing to close.
"""

import datetime
import importlib.metadata
import json
import os
import platform

import jax
import numpy as np

import lloglin
from lloglin.training.metrics import progress  # noqa: F401  (re-exported for suites)

REPORT_FILE = "report.json"
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def save_figure(fig, path: str, *, dpi: int = 120) -> str:
  """Saves a matplotlib figure as the PNG `path` (its folder created); returns the path."""
  if not str(path).endswith(".png"):
    raise ValueError(f"path: expected a .png file name, got {path!r}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  return str(path)


def environment() -> dict:
  """Where and when a report was made: date (UTC), Python, platform, package versions, devices."""
  devices = jax.devices()
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "python": platform.python_version(),
      "platform": platform.platform(),
      "lloglin": lloglin.__version__,
      "packages": {name: _version(name) for name in _VERSIONED},
      "backend": jax.default_backend(),
      "devices": f"{len(devices)} x {devices[0].device_kind}",
      "process_count": jax.process_count(),
  }


def write_report(out_dir: str, *, suite: str, config, results: dict,
                 checkpoint: str | None = None, figures=()) -> dict:
  """Writes out_dir/report.json: suite, config, checkpoint, environment, results, figures (PNG
  file names in out_dir). numpy / jax values in `results` become numbers and lists."""
  report = {
      "suite": suite,
      "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
      "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
      "environment": environment(),
      "results": results,
      "figures": list(figures),
  }
  text = json.dumps(report, indent=1, default=_jsonable)  # a bad value fails before writing
  with open(os.path.join(out_dir, REPORT_FILE), "w") as f:
    f.write(text)
  return report


def _version(distribution: str) -> str | None:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def _jsonable(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  raise TypeError(f"report: a value of type {type(x).__name__} is not JSON-serializable ({x!r})")
