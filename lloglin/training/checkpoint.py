"""Orbax checkpointing of the train state, the data-iterator position and the config.

Layout: `<workdir>/checkpoints/<step>/{state,data,config}`; `config` is the whole experiment
config as JSON, so eval.py can rebuild the model from a checkpoint directory alone.
Saves are atomic (orbax writes to a temporary directory and renames), so a failed save never
touches earlier checkpoints; a latest checkpoint that cannot be read is skipped with a warning.
"""

import errno
import logging
import os

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

log = logging.getLogger(__name__)


class CheckpointSaveError(RuntimeError):
  pass


def _abstract(tree):
  """Shape/dtype/sharding skeleton of a pytree of arrays (the restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpointer:
  """keep-last-k checkpoints (plus the best by eval loss when `keep_best`)."""

  def __init__(self, directory: str, *, keep: int = 3, keep_best: bool = False,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    policies = [checkpoint_managers.LatestN(n=keep)]
    if keep_best:
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: -m["eval_loss"], n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._failed = False

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, *, data_state: dict, config: dict, metrics: dict | None = None):
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state),
                              config=ocp.args.JsonSave(config))
    try:
      self.manager.save(step, args=args, metrics=metrics)
    except OSError as e:
      self._raise_save_error(step, e)

  def wait(self):
    """Blocks until async saves are done; a failed one raises CheckpointSaveError."""
    try:
      self.manager.wait_until_finished()
    except OSError as e:
      self._raise_save_error(None, e)

  def _raise_save_error(self, step, error: OSError):
    """Asynchronous saves report a failure at the next save or wait, hence 'latest requested'."""
    self._failed = True
    what = "disk full" if error.errno == errno.ENOSPC else f"I/O error ({error})"
    at = "" if step is None else f" (latest requested: step {step})"
    raise CheckpointSaveError(
        f"{what} while saving a checkpoint{at} under {self.directory}; the earlier checkpoints "
        f"(steps {self.steps()}) are intact. Free space or change --workdir, then re-run the "
        f"same command to resume from the latest one.") from error

  def restore_latest(self, state_like):
    """(step, state, data_state, config) of the newest readable checkpoint, or None if none.

    `state_like` is a state pytree (or its abstract skeleton) that gives structure, dtypes and
    shardings. A checkpoint that fails to load (corrupt, partial) is skipped with a warning.
    """
    target = _abstract(state_like)
    for step in reversed(self.steps()):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
      except Exception as e:  # orbax raises many types for unreadable files
        log.warning("checkpoint at step %d in %s cannot be read (%s: %s); trying the previous one",
                    step, self.directory, type(e).__name__, e)
        continue
      return step, restored.state, restored.data, restored.config
    return None

  def close(self):
    """Finishes pending saves; a failure already reported is not raised a second time."""
    try:
      self.manager.close()
    except OSError as e:
      if not self._failed:
        self._raise_save_error(None, e)


def read_config(checkpoint_dir: str, step: int | None = None) -> dict:
  """The experiment config saved with a checkpoint (latest step by default)."""
  with ocp.CheckpointManager(os.path.abspath(checkpoint_dir),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint found in {checkpoint_dir}")
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
