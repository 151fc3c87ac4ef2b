"""Rebuild a trained model from a directory alone: a training workdir, its checkpoints/ folder,
or a params-only export."""

import os

import jax
import ml_collections
from flax import nnx

from lloglin.models import ModelConfig, build_model
from lloglin.training import export
from lloglin.training.checkpoint import Checkpointer, read_config
from lloglin.training.optimizer import make_adamw
from lloglin.training.step import init_state


def _checkpoint_dir(path: str) -> str:
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def load_model(path: str) -> tuple[nnx.Module, dict]:
  """(model, experiment config as a dict) from `path`; the config rebuilds the model."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if export.is_export(path):
    config = export.read_export_config(path)
    model = build_model(ModelConfig.from_dict(config["model"]))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = export.load_params(path, params)
    return nnx.merge(graphdef, params, rest), config
  ckpt_dir = _checkpoint_dir(path)
  config = read_config(ckpt_dir)
  model = build_model(ModelConfig.from_dict(config["model"]))
  tx = make_adamw(ml_collections.ConfigDict(config["optim"]), config["train"]["num_steps"])
  graphdef, state = init_state(model, tx)
  ckpt = Checkpointer(ckpt_dir, async_save=False)
  try:
    restored = ckpt.restore_latest(jax.eval_shape(lambda: state))
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no readable checkpoint in {ckpt_dir}")
  _, state, _, _ = restored
  return nnx.merge(graphdef, state["params"], state["rest"]), config
