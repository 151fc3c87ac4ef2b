"""Rebuild a trained model from a directory alone: a training workdir, its checkpoints/ folder,
or a params-only export."""

import os

import jax
from flax import nnx

from lloglin.models import ModelConfig
from lloglin.training import export
from lloglin.training.checkpoint import Checkpointer, read_config
from lloglin.training.step import effective_params, make_program
from lloglin.training.tasks import task_of


def _checkpoint_dir(path: str) -> str:
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def load_model(path: str) -> tuple[nnx.Module, dict]:
  """(model, experiment config as a dict) from `path`; the config's task and model sections
  rebuild the model (a DecoderLM for the lm task, a RewardModel for reward, ...)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if export.is_export(path):
    config = export.read_export_config(path)
    model = task_of(config).build_model(ModelConfig.from_dict(config["model"]))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = export.load_params(path, params)
    return nnx.merge(graphdef, params, rest), config
  # Imported here: a params-only export loads without ml_collections (the GPU machines lack it).
  import ml_collections
  ckpt_dir = _checkpoint_dir(path)
  config = read_config(ckpt_dir)
  task = task_of(config)
  model = task.build_model(ModelConfig.from_dict(config["model"]))
  optim_cfg = ml_collections.ConfigDict(config["optim"])
  # The example batch is only traced: it gives SVD adapters their factors' shapes.
  program = lambda: make_program(optim_cfg, model, num_steps=config["train"]["num_steps"],
                                 first_batch=lambda: task.example_batch(config["seq_len"]),
                                 loss=task.loss)
  graphdef, abstract_state = program().graphdef, jax.eval_shape(lambda: program().state)
  ckpt = Checkpointer(ckpt_dir, async_save=False)
  try:
    restored = ckpt.restore_latest(abstract_state)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no readable checkpoint in {ckpt_dir}")
  _, state, _, _ = restored
  return nnx.merge(graphdef, effective_params(state), state["rest"]), config

