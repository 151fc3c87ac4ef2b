"""The reward task: its Bradley-Terry loss, and the shared loop, optimizers and export serving it
(it learns the synthetic preferences, resumes exactly, exports and loads back)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import reward as reward_config
from lloglin.data import make_preference_dataset
from lloglin.models.reward import RewardModel, build_reward_model
from lloglin.training import trainer
from lloglin.training.loading import load_model
from lloglin.training.metrics import read_metrics
from lloglin.training.step import effective_params, make_eval_step, make_program
from lloglin.training.tasks import get_task, reward
from tests.training.test_train import assert_resumes_exactly, tiny_config

NUM_STEPS = 40


def test_bradley_terry_loss_and_gradient_match_the_float64_formula():
  rng = np.random.default_rng(0)
  r_chosen, r_rejected = rng.normal(size=7) * 3, rng.normal(size=7) * 3
  with jax.enable_x64(True):
    value, (g_chosen, g_rejected) = jax.value_and_grad(
        lambda c, r: reward.loss(lambda tokens, segment_ids_BT: jnp.concatenate([c, r]), {
            "chosen": np.zeros((7, 1)), "rejected": np.zeros((7, 1)),
            "chosen_segment_ids": np.ones((7, 1)), "rejected_segment_ids": np.ones((7, 1))})[0],
        argnums=(0, 1))(jnp.asarray(r_chosen), jnp.asarray(r_rejected))
  margin = r_chosen - r_rejected
  np.testing.assert_allclose(value, np.mean(np.log1p(np.exp(-margin))), rtol=1e-12)
  expected = -1 / (1 + np.exp(margin)) / 7  # d/dm of mean(log(1 + e^-m)) for each pair
  np.testing.assert_allclose(g_chosen, expected, rtol=1e-12)
  np.testing.assert_allclose(g_rejected, -expected, rtol=1e-12)


def _config(**train):
  """configs/reward.py:tiny with errors easy enough to learn in NUM_STEPS steps, evaluated on
  256 pairs (chance: 0.5 +- 0.03)."""
  train = dict(dict(num_steps=NUM_STEPS, checkpoint_every=20, eval_every=20, eval_steps=16),
               **train)
  cfg = tiny_config(reward_config, **train)
  cfg.data.preferences.num_errors = 3
  cfg.data.preferences.num_val_examples = 256
  return cfg


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
  """The workdir of one uninterrupted reward run."""
  workdir = tmp_path_factory.mktemp("reward")
  trainer.train(_config(), str(workdir))
  return workdir


def _last_eval(workdir):
  return [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "eval_loss" in r][-1]


def test_reward_run_learns_the_synthetic_preferences(reward_run):
  records = read_metrics(os.path.join(reward_run, "metrics.jsonl"))
  train = [r for r in records if "loss" in r]
  assert {"loss", "accuracy", "margin", "grad_norm"} <= set(train[0])
  final = _last_eval(reward_run)
  assert final["step"] == NUM_STEPS and final["eval_pairs"] == 256
  assert final["eval_accuracy"] > 0.6 and final["eval_margin"] > 0
  assert final["eval_loss"] < np.log(2)  # the loss of a model that cannot tell the two apart


def test_reward_run_resumes_exactly(reward_run, tmp_path, monkeypatch):
  assert_resumes_exactly(_config(), reward_run, tmp_path, monkeypatch, 23)


def test_export_and_checkpoint_load_back_with_the_trained_rewards(reward_run):
  """Both give the run's last eval metrics, computed again from the loaded model."""
  cfg, expected = _config(), _last_eval(reward_run)
  task = get_task("reward")
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  val_ds = make_preference_dataset(cfg.data, split="validation", seq_len=cfg.seq_len,
                                   batch_size=cfg.batch_size, seed=cfg.seed)
  for path in (reward_run / "export", reward_run):
    model, config = load_model(str(path))
    assert isinstance(model, RewardModel) and config["task"] == "reward"
    graphdef, params, rest = jax.device_get(nnx.split(model, nnx.Param, ...))
    got = task.evaluate(make_eval_step(graphdef, task.eval_sums), params, rest, val_ds,
                        cfg.train.eval_steps, mesh)
    for key in ("eval_loss", "eval_accuracy", "eval_margin"):
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=f"{path} {key}")


@pytest.mark.parametrize("optim", [dict(name="galore"),
                                   dict(name="onesided_lora", projection="svd")])
def test_low_rank_optimizers_train_the_reward_model(optim):
  cfg = _config()
  cfg.optim.update(rank=4, **optim)
  batch = next(make_preference_dataset(cfg.data, split="train", seq_len=cfg.seq_len,
                                       batch_size=cfg.batch_size, seed=0))
  model = build_reward_model(trainer.model_config(cfg, cfg.data.preferences.vocab_size))
  program = make_program(cfg.optim, model, num_steps=4, first_batch=lambda: batch,
                         loss=reward.loss)
  before = _flat(effective_params(program.state))
  state = program.state
  for _ in range(2):  # the warm-up's learning rate is 0 at the first step
    state, metrics = program.train_step(state, batch)
  assert set(metrics) == {"loss", "accuracy", "margin", "grad_norm"}
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  after = _flat(effective_params(state))
  moved = {path[0] for path in before if not np.array_equal(before[path], after[path])}
  assert moved == {"trunk", "head"}


def _flat(params) -> dict:
  return {path: np.array(x) for path, x in nnx.to_flat_state(params)}


@pytest.mark.slow
def test_reward_trains_on_a_data_fsdp_tensor_mesh_like_on_one_device(tmp_path):
  def run(name, **mesh):
    cfg = _config(num_steps=3, eval_every=3, checkpoint_every=3)
    cfg.mesh.update(mesh)
    trainer.train(cfg, str(tmp_path / name))
    return [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]

  one = run("one", data=1, fsdp=1, tensor=1)
  np.testing.assert_allclose(run("mesh", data=2, fsdp=2, tensor=2), one, rtol=2e-5)
