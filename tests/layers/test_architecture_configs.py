"""configs/{transformer,mamba2,loglinear_mamba2,gdn,loglinear_gdn,path,path_fox}.py: the ~125M
sizes (counted without allocating) and a few training steps of each `:tiny` variant."""

import importlib

import jax
import numpy as np
import pytest
from flax import nnx

from configs.architectures import ARCHITECTURES
from lloglin import optim
from lloglin.models import build_model, count_params
from lloglin.training import trainer

# Parameter counts with the GPT-2 vocabulary (50304 rows), as listed in configs/architectures.py.
EXPECTED_MILLIONS = {"transformer": 123.6, "path": 124.3, "path_fox": 124.4, "mamba2": 129.0,
                     "loglinear_mamba2": 134.3, "gdn": 123.9, "loglinear_gdn": 124.5}


def config(arch, arg=None):
  return importlib.import_module(f"configs.{arch}").get_config(arg)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_full_size_is_about_125m_parameters(arch):
  cfg = config(arch)
  model = nnx.eval_shape(lambda: build_model(trainer.model_config(cfg, 50257)))
  assert count_params(model) / 1e6 == pytest.approx(EXPECTED_MILLIONS[arch], abs=0.1)
  expected_mixer = "attention" if arch == "transformer" else arch
  assert set(trainer.model_config(cfg, 50257).mixers) == {expected_mixer}


@pytest.mark.parametrize("arch", ["loglinear_mamba2", "loglinear_gdn", "path"])
def test_full_size_excludes_ssm_gates_from_weight_decay(arch):
  cfg = config(arch)
  model = nnx.eval_shape(lambda: build_model(trainer.model_config(cfg, 50257)))
  mask = optim.factory.decay_mask(optim.factory.read_config(cfg.optim))
  flat = jax.tree_util.tree_flatten_with_path(mask(nnx.state(model, nnx.Param)))[0]
  excluded = {optim.path_str(path).rsplit("/", 1)[-1] for path, flag in flat if not flag}
  expected = {"loglinear_mamba2": {"A_log", "dt_bias", "D", "level_weight"},
              "loglinear_gdn": {"A_log", "dt_bias", "level_weight"}, "path": set()}[arch]
  assert excluded == expected
  assert sum(flag for _, flag in flat) > len(flat) / 2  # kernels, norms, embeddings decay


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_variant_trains(arch, tmp_path):
  cfg = config(arch, "tiny")
  cfg.train.num_steps = 3
  cfg.train.log_every = cfg.train.eval_every = cfg.train.checkpoint_every = 3
  cfg.train.eval_steps = 1
  cfg.train.async_checkpointing = False
  final = trainer.train(cfg, str(tmp_path))
  assert np.isfinite(final["loss"]) and np.isfinite(final["eval_loss"])
  assert 0 <= final["eval_accuracy"] <= 1


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    config("gdn", "huge")


def test_shakespeare_mixers_have_equal_parameter_counts():
  from configs import shakespeare_mixers
  counts = {}
  for mixer in shakespeare_mixers.MLP_DIM:
    cfg = shakespeare_mixers.get_config(mixer)
    counts[mixer] = count_params(nnx.eval_shape(lambda: build_model(
        trainer.model_config(cfg, 258))))
  assert max(counts.values()) - min(counts.values()) <= 1000, counts
  assert abs(counts["attention"] - 459_500) <= 500, counts
