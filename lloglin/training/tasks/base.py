"""The Task record, the task registry, and what tasks share: summing eval batches, and loading
an LM export into a model (`init_from`).

The loop (lloglin.training.trainer), the step functions (lloglin.training.step), every
optimizer, meshes, checkpoints and export serve every task unchanged; `c.task` names the task
("lm" by default), and the saved config records it, so that lloglin.training.loading rebuilds
the task's model.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from lloglin.models import DecoderLM, ModelConfig, build_model as build_lm
from lloglin.parallel import distributed
from lloglin.training import export
from lloglin.training.metrics import progress

DEFAULT_TASK = "lm"


@dataclasses.dataclass(frozen=True)
class Task:
  """A training objective.

  build_model(mcfg, *, seed) -> nnx.Module: the model, randomly initialised, from a ModelConfig.
  make_dataset(data_cfg, *, split, seq_len, batch_size, seed, process_index, process_count):
    an iterator of batches in the task's format, with `vocab_size` and `get_state()` /
    `set_state()` (the exact-resume position), as lloglin.data.Dataset.
  loss(model, batch) -> (scalar, {name: scalar}): the scalar is minimised and logged as "loss",
    the named terms are logged beside it (and must not be "loss" or "grad_norm").
  eval_sums(model, batch) -> {name: array}: sums over one batch, which `evaluate` adds up.
  evaluate(eval_step, params, rest, dataset, num_batches, mesh) -> {name: value}: the eval
    metrics from the jitted `eval_sums` (`summed_evaluation` builds one from a finaliser). They
    include "eval_loss" (train.keep_best ranks checkpoints by it); scalars are logged, other
    values (a per-position curve) only returned.
  example_batch(seq_len) -> dict: a one-row batch of the format (zeros); its shapes rebuild a
    checkpoint's state without the data (SVD adapter factors).
  lm_part(model) -> DecoderLM: the part of the model that `init_from` loads an LM export into;
  drops_lm_head: whether the export's LM head is dropped there (a reward trunk has no head).
  sequences_per_row: sequences of seq_len tokens in one batch row (for tokens/s).
  configure(task, config) -> Task: the task with the options of an experiment config (a
    ConfigDict or a saved dict) bound into its functions (`reward` reads `config.reward`: its
    objective, consistency regulariser, augmentation); `task_of` applies it, so the loop, eval
    and loading see the configured task. None: the task takes no options.
  """
  name: str
  build_model: Callable[..., nnx.Module]
  make_dataset: Callable
  loss: Callable
  eval_sums: Callable
  evaluate: Callable
  example_batch: Callable[[int], dict]
  lm_part: Callable[[nnx.Module], DecoderLM] = lambda model: model
  drops_lm_head: bool = False
  sequences_per_row: int = 1
  configure: Callable[["Task", Any], "Task"] | None = None


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
  """Adds `task` to the registry under `task.name` (a name may be registered once)."""
  if task.name in _TASKS:
    raise ValueError(f"task {task.name!r} is already registered")
  _TASKS[task.name] = task
  return task


def task_names() -> list[str]:
  return sorted(_TASKS)


def get_task(name: str) -> Task:
  if name not in _TASKS:
    raise ValueError(f"task={name!r} is unknown; expected one of {task_names()}")
  return _TASKS[name]


def task_of(config) -> Task:
  """The task of an experiment config (a ConfigDict or a saved dict), configured by it; configs
  saved before tasks existed are LM configs."""
  task = get_task(config.get("task", DEFAULT_TASK))
  return task if task.configure is None else task.configure(task, config)


def sum_eval_batches(eval_step, params, rest, dataset, num_batches: int, mesh, *,
                     progress_desc: str | None = None) -> dict:
  """The elementwise sum of `eval_step(params, rest, batch)` over the first `num_batches` batches
  of `dataset` (rewound first, so every evaluation sees the same batches), on the host.
  `progress_desc` shows a progress bar with that label."""
  dataset.set_state({"epoch": 0, "index": 0})
  batches = range(num_batches)
  if progress_desc is not None:
    batches = progress(batches, desc=progress_desc)
  totals = None
  for _ in batches:
    out = jax.device_get(eval_step(params, rest, distributed.global_batch(next(dataset), mesh)))
    totals = out if totals is None else jax.tree.map(np.add, totals, out)
  return totals


def summed_evaluation(finish: Callable[[dict], dict]) -> Callable:
  """An `evaluate` that adds up the eval sums of the first `num_batches` batches of the dataset
  (`sum_eval_batches`) and returns `finish(totals)`."""

  def evaluate(eval_step, params, rest, dataset, num_batches: int, mesh, *,
               progress_desc: str | None = None) -> dict:
    return finish(sum_eval_batches(eval_step, params, rest, dataset, num_batches, mesh,
                                   progress_desc=progress_desc))

  return evaluate


def init_from_export(task: Task, model: nnx.Module, path: str) -> None:
  """Loads the params of the LM export at `path` into `task.lm_part(model)`, in place.

  The export's LM head is dropped when `task.drops_lm_head`; every other parameter must match
  in path and shape, or a ValueError names the model config fields where the two differ.
  """
  if not export.is_export(path):
    raise FileNotFoundError(f"init_from={path!r} is not a params-only export (a directory with "
                            "config.json and params/, such as a training workdir's export/)")
  saved = export.read_export_config(path)
  if saved.get("task", DEFAULT_TASK) != DEFAULT_TASK:
    raise ValueError(f"init_from={path!r} is an export of task {saved['task']!r}; expected an "
                     f"LM export (task {DEFAULT_TASK!r})")
  target = task.lm_part(model)
  source_cfg = ModelConfig.from_dict(saved["model"])
  source_like = nnx.state(nnx.eval_shape(lambda: build_lm(source_cfg)), nnx.Param)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  source = export.load_params(path, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), source_like))
  source = {key: x for key, x in nnx.to_flat_state(source)
            if not (task.drops_lm_head and key[0] == "head")}
  params = dict(nnx.to_flat_state(nnx.state(target, nnx.Param)))
  if _shapes(source) != _shapes(params):
    ours, theirs = target.cfg.to_dict(), source_cfg.to_dict()
    if task.drops_lm_head:  # the head is dropped: how it was tied does not matter
      ours["tie_embeddings"] = theirs["tie_embeddings"]
    differ = {k: (theirs[k], ours[k]) for k in ours if ours[k] != theirs[k]}
    raise ValueError(
        f"init_from={path!r}: the export's parameters do not fit the model; model config fields "
        f"(export, this model): {differ}. Export model config: {theirs}; this model: {ours}")
  nnx.update(target, nnx.from_flat_state(
      {key: x.replace(x.get_value().astype(params[key].dtype)) for key, x in source.items()}))


def _shapes(flat: dict) -> dict:
  return {key: tuple(x.shape) for key, x in flat.items()}
