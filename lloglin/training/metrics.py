"""Metrics to JSONL and TensorBoard event files (tensorboardX: no TensorFlow needed), and the
progress bars of long loops."""

import json
import os

import jax
import numpy as np


def progress(iterable, *, desc: str, total: int | None = None):
  """A tqdm progress bar over `iterable` (a widget in notebooks), shown by process 0 only."""
  from tqdm.auto import tqdm
  return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True,
              disable=jax.process_index() != 0)


class MetricWriter:
  """Writes `{"step": s, name: value, ...}` lines to metrics.jsonl and scalars to TensorBoard.

  Only process 0 writes. On resume, lines of steps after the restored step (written by a run
  that was killed before its next checkpoint) are dropped, so the file holds one curve.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    _truncate_after(self.path, resume_step)
    from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    clean = {k: _to_python(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **clean}) + "\n")
    for name, value in clean.items():
      if isinstance(value, (int, float)):
        self._tb.add_scalar(name, value, step)

  def close(self):
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def read_metrics(path: str) -> list[dict]:
  """All records of a metrics.jsonl file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _truncate_after(path: str, step: int):
  if not os.path.exists(path):
    return
  kept = [r for r in read_metrics(path) if r["step"] <= step]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in kept)


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()
