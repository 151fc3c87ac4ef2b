"""The contrastive task: InfoNCE and the MCQ loss against float64 formulas (and the MCQ loss's
gradient against finite differences), its options, and the shared loop serving it (on the tests'
8-device data mesh): it learns toy_pairs, resumes exactly, exports and loads back."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import contrastive as contrastive_config
from lloglin.data.contrastive import make_contrastive_dataset
from lloglin.models.dual_encoder import DualEncoder, l2_normalize
from lloglin.training import trainer
from lloglin.training.loading import load_model
from lloglin.training.losses import info_nce, option_cross_entropy
from lloglin.training.metrics import read_metrics
from lloglin.training.step import make_eval_step
from lloglin.training.tasks import task_of
from lloglin.training.tasks.contrastive import options_of
from tests.training.test_train import assert_resumes_exactly, tiny_config

NUM_STEPS = 40
ALPHA = 0.5


def _log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_info_nce_and_mcq_loss_match_float64_formulas():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 5)) * 3
  logits_BK, answer = rng.normal(size=(5, 4)) * 3, np.array([0, 3, 1, 1, 2])
  i2t = -np.mean([_log_softmax(logits, 1)[i, i] for i in range(5)])
  t2i = -np.mean([_log_softmax(logits, 0)[i, i] for i in range(5)])
  mcq = -_log_softmax(logits_BK, 1)[np.arange(5), answer]
  with jax.enable_x64(True):
    np.testing.assert_allclose(info_nce(jnp.asarray(logits)), (i2t + t2i) / 2, rtol=1e-12)
    np.testing.assert_allclose(option_cross_entropy(jnp.asarray(logits_BK), jnp.asarray(answer)),
                               mcq, rtol=1e-12)
  with pytest.raises(ValueError, match=r"logits_IT: expected a square \[B, B\] matrix"):
    info_nce(jnp.zeros((2, 3)))


def test_mcq_loss_gradient_matches_finite_differences():
  """The MCQ loss as the task computes it, mean_b CE(scale * cos(image_b, option_bk), answer_b),
  differentiated with respect to the raw (unnormalised) image and option features and the
  scale: jax.grad against central differences, in float64."""
  rng = np.random.default_rng(1)
  B, K, D = 2, 3, 4
  answer = np.array([2, 0])
  x0 = rng.normal(size=B * D + B * K * D + 1)

  @jax.jit
  def mcq(x):
    images_BD = l2_normalize(x[:B * D].reshape(B, D))
    options_BKD = l2_normalize(x[B * D:-1].reshape(B, K, D))
    logits_BK = x[-1] * jnp.einsum("bd,bkd->bk", images_BD, options_BKD)
    return option_cross_entropy(logits_BK, jnp.asarray(answer)).mean()

  with jax.enable_x64(True):
    x0 = jnp.asarray(x0)
    grad = np.asarray(jax.grad(mcq)(x0))
    eps = 1e-6
    numeric = np.array([(mcq(x0.at[i].add(eps)) - mcq(x0.at[i].add(-eps))) / (2 * eps)
                        for i in range(x0.size)])
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
  assert np.abs(grad).max() > 1e-2  # a real, non-zero gradient


def test_contrastive_options_are_checked():
  assert options_of({}).alpha == 1.0 and not options_of({}).reads_options
  for section, pattern in [(dict(alpha=1.5), r"contrastive.alpha=1.5; expected a number in"),
                           (dict(alpha=True), r"contrastive.alpha=True"),
                           (dict(beta=1), r"contrastive: unknown option\(s\) \['beta'\]"),
                           (dict(encoder=dict(pooling="max")), r"encoder.pooling='max'")]:
    with pytest.raises(ValueError, match=pattern):
      options_of({"contrastive": section})
  cfg = contrastive_config.get_config("tiny")
  cfg.contrastive.alpha = 0.5
  cfg.data.toy_pairs.num_options = 0
  with pytest.raises(ValueError, match=r"toy_pairs train records have no options.*alpha < 1"):
    task_of(cfg).make_dataset(cfg.data, split="train", seq_len=cfg.seq_len, batch_size=4, seed=0)


def _config(**train):
  """configs/contrastive.py:tiny mixing InfoNCE and the MCQ loss, evaluated on 64 records."""
  train = dict(dict(num_steps=NUM_STEPS, checkpoint_every=20, eval_every=20, eval_steps=4),
               **train)
  cfg = tiny_config(contrastive_config, **train)
  cfg.contrastive.alpha = ALPHA
  cfg.data.toy_pairs.num_val_examples = 64
  return cfg


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("contrastive")
  trainer.train(_config(), str(workdir))
  return workdir


def _last_eval(workdir):
  return [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "eval_loss" in r][-1]


def test_contrastive_run_learns_the_toy_pairs(contrastive_run):
  """In-batch retrieval (chance 1/16) and the 4-option MCQ (chance 1/4) beat chance clearly;
  the logged loss is the alpha mix of the logged terms."""
  train = [r for r in read_metrics(os.path.join(contrastive_run, "metrics.jsonl")) if "loss" in r]
  assert {"clip", "mcq", "accuracy", "text_accuracy", "mcq_accuracy", "logit_scale",
          "grad_norm"} <= set(train[0])
  for r in train:
    np.testing.assert_allclose(r["loss"], ALPHA * r["clip"] + (1 - ALPHA) * r["mcq"], rtol=1e-5)
  final = _last_eval(contrastive_run)
  assert final["step"] == NUM_STEPS and final["eval_examples"] == 64
  assert final["eval_accuracy"] > 2 / 16 and final["eval_mcq_accuracy"] > 0.5, final
  assert final["eval_loss"] < ALPHA * np.log(16) + (1 - ALPHA) * np.log(4)  # uniform scores


def test_contrastive_run_resumes_exactly(contrastive_run, tmp_path, monkeypatch):
  assert_resumes_exactly(_config(), contrastive_run, tmp_path, monkeypatch, 23)


def test_export_and_checkpoint_load_back_with_the_trained_scores(contrastive_run):
  """Both give the run's last eval metrics, computed again from the loaded model."""
  cfg, expected = _config(), _last_eval(contrastive_run)
  task = task_of(cfg)
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:1])
  val_ds = make_contrastive_dataset(cfg.data, split="validation", seq_len=cfg.seq_len,
                                    batch_size=cfg.batch_size, seed=cfg.seed)
  eval_step = None
  for path in (contrastive_run / "export", contrastive_run):
    model, config = load_model(str(path))
    assert isinstance(model, DualEncoder) and config["task"] == "contrastive"
    graphdef, params, rest = jax.device_get(nnx.split(model, nnx.Param, ...))
    eval_step = eval_step or make_eval_step(graphdef, task.eval_sums)  # one compile for both
    got = task.evaluate(eval_step, params, rest, val_ds, cfg.train.eval_steps, mesh)
    for key in ("eval_loss", "eval_accuracy", "eval_mcq_accuracy"):
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=f"{path} {key}")
