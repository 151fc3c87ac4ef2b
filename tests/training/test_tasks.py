"""The task registry, and `init_from`: an LM export initialising an LM, a reward trunk or a dual
encoder's text tower; an export of the same task the whole model."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from configs import contrastive as contrastive_config, mqar, reward as reward_config
from lloglin.models import build_model
from lloglin.training import export, trainer
from lloglin.training.tasks import get_task, register_task, task_of

VOCAB = 64


def test_unknown_task_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"task='rl' is unknown; expected one of "
                     r"\['contrastive', 'lm', 'reward'\]"):
    get_task("rl")
  with pytest.raises(ValueError, match="task 'lm' is already registered"):
    register_task(dataclasses.replace(get_task("reward"), name="lm"))
  assert task_of({}) is get_task("lm")  # configs saved before tasks existed


def _flat(module) -> dict:
  return {path: np.asarray(x) for path, x in nnx.to_flat_state(nnx.state(module, nnx.Param))}


@pytest.fixture
def lm_export(tmp_path):
  """(export dir, the LM): an untied LM of configs/mqar.py:tiny's shape, exported."""
  cfg = mqar.get_config("tiny")
  cfg.model.tie_embeddings = False
  mcfg = trainer.model_config(cfg, VOCAB)
  lm = build_model(mcfg, seed=7)
  config = dict(cfg.to_dict(), model=mcfg.to_dict(), task="lm")
  export.export_params(str(tmp_path / "export"), nnx.state(lm, nnx.Param), config)
  return str(tmp_path / "export"), lm


def _reward_config(init_from, experiment=reward_config, **model):
  cfg = experiment.get_config("tiny")
  cfg.model.update(mqar.get_config("tiny").model.to_dict(), **model)
  cfg.init_from = init_from
  return cfg


@pytest.mark.parametrize("experiment, lm_part, rest", [
    (reward_config, "trunk", ("head",)),
    (contrastive_config, "text", ("text_proj", "image_proj", "vision_blocks", "patch_embed"))])
def test_init_from_loads_the_lm_export_into_the_lm_part(lm_export, experiment, lm_part, rest):
  """The reward trunk / the dual encoder's text tower get the LM's parameters (without its
  head); the rest of the model keeps its random init."""
  path, lm = lm_export
  model, _ = trainer.init_model(_reward_config(path, experiment), VOCAB)
  fresh, _ = trainer.init_model(_reward_config("", experiment), VOCAB)
  expected = {k: v for k, v in _flat(lm).items() if k[0] != "head"}
  got = _flat(getattr(model, lm_part))
  assert got.keys() == expected.keys()
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=str(key))
  for name in rest:
    jax.tree.map(np.testing.assert_array_equal, _flat(getattr(model, name)),
                 _flat(getattr(fresh, name)))


def test_init_from_loads_every_parameter_of_an_lm(lm_export):
  path, lm = lm_export
  cfg = mqar.get_config("tiny")
  cfg.model.tie_embeddings = False
  cfg.init_from = path
  model, _ = trainer.init_model(cfg, VOCAB)
  jax.tree.map(np.testing.assert_array_equal, _flat(model), _flat(lm))


def test_init_from_a_differently_shaped_export_names_both_configs(lm_export, tmp_path):
  path, _ = lm_export
  with pytest.raises(ValueError, match=r"'d_model': \(32, 48\).*Export model config"):
    trainer.init_model(_reward_config(path, d_model=48), VOCAB)
  with pytest.raises(FileNotFoundError, match="not a params-only export"):
    trainer.init_model(_reward_config(str(tmp_path)), VOCAB)


def test_init_from_an_export_of_the_same_task_loads_the_whole_model(tmp_path):
  cfg = _reward_config("")
  trained, mcfg = trainer.init_model(cfg, VOCAB)
  nnx.update(trained, jax.tree.map(lambda x: x + 1.0, nnx.state(trained, nnx.Param)))
  path = str(tmp_path / "export")
  export.export_params(path, nnx.state(trained, nnx.Param),
                       dict(cfg.to_dict(), model=mcfg.to_dict(), task="reward"))
  model, _ = trainer.init_model(_reward_config(path), VOCAB)
  jax.tree.map(np.testing.assert_array_equal, _flat(model), _flat(trained))
  with pytest.raises(ValueError, match="do not fit the model.*export model config"):
    trainer.init_model(_reward_config(path, d_model=48), VOCAB)
