"""The reward task: its Bradley-Terry, regression and paraphrase-consistency losses against
float64 formulas, and the shared loop, optimizers and export serving it (it learns the synthetic
preferences, resumes exactly, exports and loads back)."""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import reward as reward_config
from configs import rewordbench
from lloglin.data import make_preference_dataset
from lloglin.models.reward import RewardModel, build_reward_model
from lloglin.training import trainer
from lloglin.training.loading import load_model
from lloglin.training.metrics import read_metrics
from lloglin.training.step import effective_params, make_eval_step, make_program
from lloglin.training.tasks import get_task, task_of
from lloglin.training.tasks.reward import options_of
from tests.training.test_train import assert_resumes_exactly, tiny_config

NUM_STEPS = 40


def _task(objective="bradley_terry", consistency_alpha=0.0, augmentation=False):
  return task_of({"task": "reward", "reward": dict(
      objective=objective, consistency_alpha=consistency_alpha, augmentation=augmentation)})


class _Table:
  """A stand-in reward model for the loss tests: row b's reward is w[row[0]] (float64), so
  the loss is a function of the table w."""

  def __init__(self, w):
    self.w = w

  def __call__(self, tokens_BT, *, segment_ids_BT):
    return self.w[tokens_BT[:, 0]]


def _formula(objective, alpha, augmentation, r, s):
  """The objective in numpy, from the rewards r of each row name (and the scores s)."""
  def bt(c, rej):
    return np.log1p(np.exp(-(c - rej)))
  if objective == "regression":
    base, para = (r["response"] - s) ** 2, (r["paraphrase"] - s) ** 2
    consistency = (r["response"] - r["paraphrase"]) ** 2
  else:
    base, para = bt(r["chosen"], r["rejected"]), bt(r["chosen_paraphrase"],
                                                    r["rejected_paraphrase"])
    consistency = ((r["chosen"] - r["chosen_paraphrase"]) ** 2 +
                   (r["rejected"] - r["rejected_paraphrase"]) ** 2) / 2
  return np.mean(base + augmentation * para + alpha * consistency)


@pytest.mark.parametrize("objective", ["regression", "bradley_terry"])
@pytest.mark.parametrize("alpha, augmentation", [(0.0, False), (2.5, True)])
def test_objectives_and_their_gradients_match_float64_formulas(objective, alpha, augmentation):
  """The loss equals the formula (alpha 0, no augmentation: the plain regression / Bradley-Terry
  loss; augmentation alone: tests/evals/rewordbench/test_suite.py, test_one_config_trains_and_evaluates), and its gradient
  the central finite differences of the formula: both rewards of the consistency term carry
  gradient."""
  B, rng = 5, np.random.default_rng(0)
  names = (("response", "paraphrase") if objective == "regression" else
           ("chosen", "rejected", "chosen_paraphrase", "rejected_paraphrase"))
  batch = {}
  for k, name in enumerate(names):  # row b of `name` reads w[k * B + b]
    batch[name] = (k * B + np.arange(B))[:, None]
    batch[f"{name}_segment_ids"] = np.ones((B, 1), np.int32)
  batch["score"] = rng.normal(size=B)
  task = _task(objective, alpha, augmentation)
  w = rng.normal(size=len(names) * B)

  def formula(w):
    return _formula(objective, alpha, augmentation,
                    {name: w[k * B:(k + 1) * B] for k, name in enumerate(names)}, batch["score"])

  with jax.enable_x64(True):
    value, grad = jax.value_and_grad(lambda w: task.loss(_Table(w), batch)[0])(jnp.asarray(w))
    terms = task.loss(_Table(jnp.asarray(w)), batch)[1]
  np.testing.assert_allclose(value, formula(w), rtol=1e-12)
  eps = 1e-6
  numeric = [(formula(w + eps * e) - formula(w - eps * e)) / (2 * eps) for e in np.eye(len(w))]
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
  base = "mse" if objective == "regression" else "bt"
  assert {base} <= set(terms) and (alpha > 0 or augmentation) == ("consistency" in terms)


def test_reward_options_are_checked():
  with pytest.raises(ValueError, match=r"reward.objective='ranking'.*'regression'"):
    _task("ranking")
  with pytest.raises(ValueError, match=r"consistency_alpha=-1.0; expected a finite number >= 0"):
    _task(consistency_alpha=-1.0)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['alpha'\]"):
    options_of({"reward": {"alpha": 1.0}})
  assert options_of({}) == options_of(reward_config.get_config())  # runs saved before `reward`


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
  assert {"loss", "bt", "accuracy", "margin", "grad_norm"} <= set(train[0])
  final = _last_eval(reward_run)
  assert final["step"] == NUM_STEPS and final["eval_pairs"] == 256
  assert final["eval_accuracy"] > 0.6 and final["eval_margin"] > 0
  assert final["eval_loss"] < np.log(2)  # the loss of a model that cannot tell the two apart


def _regression_config():
  """configs/rewordbench.py's `tiny` training (regression on the reward world) with the
  consistency term."""
  cfg = tiny_config(types.SimpleNamespace(get_config=rewordbench.training_config), num_steps=12,
                    eval_every=6, checkpoint_every=6)
  cfg.reward.consistency_alpha = 10.0
  return cfg


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
  """The workdir of one uninterrupted regression run with the consistency term."""
  workdir = tmp_path_factory.mktemp("regression")
  trainer.train(_regression_config(), str(workdir))
  return workdir


def test_regression_run_logs_every_term_and_scores_its_records(regression_run):
  records = read_metrics(os.path.join(regression_run, "metrics.jsonl"))
  train = [r for r in records if "loss" in r]
  assert {"mse", "mse_paraphrase", "consistency", "grad_norm"} <= set(train[0])
  for r in train:  # the logged loss is the objective of the logged terms
    np.testing.assert_allclose(r["loss"], r["mse"] + 10.0 * r["consistency"], rtol=1e-5)
  final = _last_eval(regression_run)
  assert final["eval_records"] == 16 and -1 <= final["eval_correlation"] <= 1
  np.testing.assert_allclose(final["eval_loss"],
                             final["eval_mse"] + 10.0 * final["eval_consistency"], rtol=1e-5)


@pytest.mark.parametrize("config, run, stop_after", [(_config, "reward_run", 23),
                                                     (_regression_config, "regression_run", 8)])
def test_reward_run_resumes_exactly(config, run, stop_after, request, tmp_path, monkeypatch):
  assert_resumes_exactly(config(), request.getfixturevalue(run), tmp_path, monkeypatch,
                         stop_after)


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
                         loss=task_of(cfg).loss)
  before = _flat(effective_params(program.state))
  state = program.state
  for _ in range(2):  # the warm-up's learning rate is 0 at the first step
    state, metrics = program.train_step(state, batch)
  assert set(metrics) == {"loss", "bt", "accuracy", "margin", "grad_norm"}
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
