"""Scorers: a trained reward model scores text exactly as its training run encoded it; a zeroed
head scores every pair equal; a user function's output is checked."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lloglin.data import make_preference_dataset
from lloglin.evals.rewordbench.data import load_records
from lloglin.evals.rewordbench.scoring import checkpoint_scorer, function_scorer, score_texts
from lloglin.evals.rewordbench.suite import evaluate
from lloglin.evals.rewordbench.transforms import TRANSFORMS
from lloglin.training.loading import load_model
from tests.evals.rewordbench.conftest import FIXTURE


@pytest.fixture(scope="module")
def reward_model(tiny_reward_run):
  return load_model(str(tiny_reward_run / "export"))


def test_checkpoint_scorer_matches_the_training_batches(reward_model):
  """Rows of 96 tokens in training, 128 in the scorer: the same rewards."""
  model, config = reward_model
  data = ml_collections.ConfigDict(config["data"])
  dataset = make_preference_dataset(data, split="validation", seq_len=config["seq_len"],
                                    batch_size=4, seed=0)
  batch = next(dataset)  # the last 4 records, in order
  forward = jax.jit(lambda model, tokens, segment_ids: model(tokens, segment_ids_BT=segment_ids))
  r_chosen = forward(model, batch["chosen"], batch["chosen_segment_ids"])
  r_rejected = forward(model, batch["rejected"], batch["rejected_segment_ids"])
  tail = load_records(str(FIXTURE))[-4:]
  scorer = checkpoint_scorer(model, config, batch_size=3)  # a batch of 3 and a padded one
  prompts = [r["prompt"] for r in tail]
  np.testing.assert_allclose(scorer(prompts, [r["chosen"] for r in tail]), r_chosen,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scorer(prompts, [r["rejected"] for r in tail]), r_rejected,
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(r_chosen, r_chosen[0])
  with pytest.raises(ValueError, match="takes 1002 tokens with its BOS/EOS, more than "
                     "seq_len=128"):
    scorer(["p"], ["x" * 1000])


def test_a_zeroed_head_scores_every_pair_equal(reward_model):
  model, config = reward_model
  zeroed = nnx.clone(model)
  for p in (zeroed.head.kernel, zeroed.head.bias):
    p[...] = jnp.zeros_like(p[...])
  scorer = checkpoint_scorer(zeroed, config, batch_size=8)
  records = load_records(str(FIXTURE))
  assert (scorer([r["prompt"] for r in records], [r["chosen"] for r in records]) == 0).all()
  results = evaluate(records, [TRANSFORMS["punct_spaces"]], scorer, seed=0, batch_size=8)
  assert results["original"]["overall"]["accuracy_before"] == 0  # ties are wrong
  assert results["transforms"]["punct_spaces"]["metrics"]["overall"]["accuracy_after"] == 0


def test_checkpoint_scorer_needs_a_text_reward_model(reward_model):
  model, config = reward_model
  with pytest.raises(ValueError, match="whose tokens are not text"):
    checkpoint_scorer(model, dict(config, data=dict(config["data"],
                                                    source="synthetic_preferences")),
                      batch_size=2)
  with pytest.raises(ValueError, match="the checkpoint holds a DecoderLM"):
    checkpoint_scorer(model.trunk, dict(config, task="lm"), batch_size=2)


def test_user_scorers_are_checked():
  scorer = function_scorer("tests.evals.rewordbench.scorers:length_scorer")
  assert score_texts(scorer, ["p", "q"], ["ab", "c"]).tolist() == [2.0, 1.0]
  with pytest.raises(ValueError, match=r"returned \(1,\) values .* for 2 .* pairs"):
    score_texts(lambda p, r: [0.0], ["p", "q"], ["a", "b"])
  with pytest.raises(ValueError, match=r"\(1 finite\)"):
    score_texts(lambda p, r: [0.0, np.nan], ["p", "q"], ["a", "b"])
  with pytest.raises(ValueError, match="rewordbench.scorer='nomodule': expected 'module:function'"):
    function_scorer("nomodule")
