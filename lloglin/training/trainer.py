"""The training loop: data, model, optimizer, jitted step, eval, metrics and checkpoints.

`train(cfg, workdir)` runs (or resumes) the experiment described by an ml_collections config.
Re-running the same command resumes from the newest readable checkpoint in `workdir`.
The objective is the task `cfg.task` names (lloglin.training.tasks): it gives the model, the
data, the loss and its logged terms, and the eval metrics; everything else here is shared.
"""

import logging
import os
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from lloglin import optim
from lloglin.models import ModelConfig, count_params
from lloglin.parallel import distributed, mesh as mesh_lib, sharding
from lloglin.training import export, tasks
from lloglin.training.checkpoint import Checkpointer
from lloglin.training.metrics import MetricWriter
from lloglin.training.step import effective_params, make_eval_step, make_program

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  pass


def model_config(cfg, vocab_size: int) -> ModelConfig:
  """The ModelConfig of an experiment; a zero model.vocab_size takes the data's vocabulary."""
  values = cfg.model.to_dict()
  values["vocab_size"] = values["vocab_size"] or vocab_size
  if values["vocab_size"] < vocab_size:
    raise ValueError(f"model.vocab_size={values['vocab_size']} is smaller than the data's "
                     f"vocabulary ({vocab_size})")
  return ModelConfig.from_dict(values)


def make_datasets(cfg):
  """This process's training and validation iterators of the task's batches (each process reads
  its own shard)."""
  n, i = jax.process_count(), jax.process_index()
  if cfg.batch_size % n:
    raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the process count {n}")
  kw = dict(seq_len=cfg.seq_len, batch_size=cfg.batch_size // n, seed=cfg.seed,
            process_index=i, process_count=n)
  make_dataset = tasks.task_of(cfg).make_dataset
  return (make_dataset(cfg.data, split="train", **kw),
          make_dataset(cfg.data, split="validation", **kw))


def init_model(cfg, vocab_size: int):
  """(model, its ModelConfig): the task's model, seeded by cfg.seed, and loaded from the LM export
  `cfg.init_from` where that is set."""
  task = tasks.task_of(cfg)
  mcfg = model_config(cfg, vocab_size)
  model = task.build_model(mcfg, seed=cfg.seed)
  if cfg.get("init_from"):
    tasks.init_from_export(task, model, cfg.init_from)
  return model, mcfg


def train(cfg, workdir: str) -> dict:
  """Trains (or resumes) and returns the last logged and evaluated metrics."""
  is_main = jax.process_index() == 0
  log.info("process %d of %d processes, %d of %d devices; each process reads its own data shard",
           jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  mesh = mesh_lib.make_mesh(cfg.get("mesh"))
  task = tasks.task_of(cfg)
  train_ds, val_ds = make_datasets(cfg)
  model, mcfg = init_model(cfg, train_ds.vocab_size)
  num_steps = cfg.train.num_steps
  program = make_program(cfg.optim, model, num_steps=num_steps,
                         first_batch=lambda: peek(train_ds, mesh), loss=task.loss)
  graphdef, state, schedule = program.graphdef, program.state, program.schedule
  state = sharding.shard_state(state, model, mesh)
  saved_config = cfg.to_dict()
  saved_config["model"] = mcfg.to_dict()
  saved_config["task"] = task.name  # load_model rebuilds the task's model from it

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints,
                      keep_best=cfg.train.keep_best, async_save=cfg.train.async_checkpointing)
  start = 0
  restored = ckpt.restore_latest(state)
  if restored is not None:
    start, state, data_state, _ = restored
    train_ds.set_state(data_state)
    log.info("resumed from step %d in %s", start, workdir)
  writer = MetricWriter(workdir, enabled=is_main, resume_step=start)
  if is_main:
    log.info("model: %s parameters, mixers %s", f"{count_params(model):,}", mcfg.mixers)
    log_optimizer(program, writer if start == 0 else None)
  del model

  train_step = sharding.use_mesh(mesh, program.train_step)
  eval_step = sharding.use_mesh(mesh, make_eval_step(graphdef, task.eval_sums))
  effective = jax.jit(effective_params)
  tokens_per_step = cfg.batch_size * cfg.seq_len * task.sequences_per_row
  last = {}
  bar = tqdm(total=num_steps, initial=start, disable=not (is_main and cfg.train.progress_bar),
             desc="train", dynamic_ncols=True)
  pending, t0 = [], time.perf_counter()
  try:
    for step in range(start + 1, num_steps + 1):
      state, metrics = train_step(state, distributed.global_batch(next(train_ds), mesh))
      pending.append(metrics)
      is_last = step == num_steps
      if step % cfg.train.log_every == 0 or is_last:
        _check_finite(state)
        host = jax.device_get(pending)
        elapsed = time.perf_counter() - t0
        last = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        last["tokens_per_second"] = len(host) * tokens_per_step / elapsed
        last["learning_rate"] = float(schedule(step))
        writer.write(step, last)
        bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last['tokens_per_second']:,.0f}")
        pending, t0 = [], time.perf_counter()
      bar.update(1)
      eval_metrics = None
      if step % cfg.train.eval_every == 0 or is_last:
        eval_metrics = task.evaluate(eval_step, effective(state), state["rest"], val_ds,
                                     cfg.train.eval_steps, mesh)
        scalars = {k: v for k, v in eval_metrics.items() if np.ndim(v) == 0}
        writer.write(step, scalars)
        last.update(eval_metrics)
        bar.write(f"step {step}: " + ", ".join(
            f"{k.removeprefix('eval_')} {v:.4f}" if isinstance(v, float)
            else f"{k.removeprefix('eval_')} {v}" for k, v in scalars.items()))
        t0 = time.perf_counter()
      if step % cfg.train.checkpoint_every == 0 or is_last:
        _check_finite(state)
        saved_metrics = None if eval_metrics is None else {"eval_loss": eval_metrics["eval_loss"]}
        ckpt.save(step, state, data_state=train_ds.get_state(), config=saved_config,
                  metrics=saved_metrics)
    ckpt.wait()
    export.export_params(os.path.join(workdir, "export"), effective(state), saved_config)
  finally:
    bar.close()
    writer.close()
    ckpt.close()
  return last


def peek(dataset, mesh) -> dict:
  """The next batch, without moving the iterator."""
  position = dataset.get_state()
  batch = distributed.global_batch(next(dataset), mesh)
  dataset.set_state(position)
  return batch


def log_optimizer(program, writer: MetricWriter | None):
  """Prints the optimizer and its state's memory by group (and logs the bytes at step 0)."""
  state = program.state
  groups = optim.optimizer_state_bytes(state["opt_state"], state[program.trained],
                                       projections=state.get("projections"))
  log.info("optimizer: %s\n%s", program.summary, optim.format_state_bytes(groups))
  if writer is not None:
    writer.write(0, {f"optimizer_bytes/{k}": v for k, v in groups.items()})


def _check_finite(state):
  bad = int(jax.device_get(state["nonfinite_step"]))
  if bad >= 0:
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {bad}; training stopped and that update was not "
        f"applied. The last good checkpoint is kept; lower optim.learning_rate or check the data.")
