"""The synthetic set, the pair sampler and the judges."""

import numpy as np
import pytest
import scipy.stats

from lloglin.evals.perception import aggregate, judges, synthetic


@pytest.fixture(scope="module")
def items():
  return synthetic.make_images(24, seed=3)


def test_synthetic_levels(items):
  assert {it.image.shape for it in items} == {(64, 64, 3)}
  full = [it for it in items if it.levels["symmetry"] == 1.0]
  assert full and all(np.array_equal(it.image, it.image[:, ::-1]) for it in full)
  broken = [it for it in items if it.levels["symmetry"] < 1.0]
  assert broken and not any(np.array_equal(it.image, it.image[:, ::-1]) for it in broken)
  assert np.array_equal(synthetic.make_images(3, seed=3)[2].image, items[2].image)


def test_sample_pairs():
  every = judges.sample_pairs(6)
  assert len({tuple(sorted(p)) for p in every.tolist()}) == len(every) == 15
  budget = judges.sample_pairs(30, per_image=4, seed=1)
  degree = np.bincount(budget.ravel(), minlength=30)
  assert degree.min() >= 2 and degree.max() <= 4 and len(budget) <= 60
  with pytest.raises(ValueError, match="per_image"):
    judges.sample_pairs(5, per_image=0)


def test_noisy_oracle(items):
  pairs = judges.sample_pairs(len(items))
  exact, _ = judges.judge_pairs(judges.NoisyOracleJudge(0.0), items, pairs, "clutter")
  for r in exact:
    a, b = items[r["a"]].levels["clutter"], items[r["b"]].levels["clutter"]
    assert r["winner"] == ("tie" if a == b else "A" if a > b else "B")
  noisy = judges.NoisyOracleJudge(0.3, seed=5)
  first, _ = judges.judge_pairs(noisy, items, pairs, "clutter")
  again, _ = judges.judge_pairs(judges.NoisyOracleJudge(0.3, seed=5), items, pairs[::-1],
                                "clutter")
  assert first == again[::-1]  # deterministic per seed, whatever the order
  flips = np.mean([f["winner"] != e["winner"] for f, e in zip(first, exact)
                   if e["winner"] != "tie"])
  assert 0.15 < flips < 0.45


def test_measure_judges_rank_levels(items):
  for name, floor in (("clutter", 0.7), ("symmetry", 0.7)):
    measured = [judges.MEASURES[name](it.image) for it in items]
    assert scipy.stats.spearmanr(measured, [it.levels[name] for it in items])[0] > floor
  plain = np.full((32, 32, 3), 255, np.uint8)
  busy = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  assert judges.compressibility(plain) > judges.compressibility(busy)
  assert judges.MeasureJudge()(synthetic.Item("p", plain, {}), synthetic.Item("b", busy, {}),
                               "simplicity").winner == "A"


def test_failed_judgement_is_recorded_and_skipped(items):
  def flaky(a, b, principle):
    if a.id == items[0].id or b.id == items[0].id:
      raise RuntimeError("malformed reply")
    return judges.Judgement("tie", "same")

  pairs = judges.sample_pairs(4)
  records, failures = judges.judge_pairs(flaky, items, pairs, "closure")
  assert len(failures) == 3 and len(records) == 3
  assert failures[0]["error"] == "RuntimeError: malformed reply"
  np.testing.assert_allclose(aggregate.scores_from_records(4, records, prior=1)["win_rate"][1:],
                             0.5)


def test_encoder_judge(items, tmp_path):
  from configs.perception import get_config
  from lloglin.evals import run_suite
  from tests.evals.perception.fake_encoder import Darkness

  judge = judges.EncoderJudge(Darkness(), items, batch_size=5)
  scores = [judge.score(it, "clutter") for it in items]
  assert scipy.stats.spearmanr(scores, [it.levels["clutter"] for it in items])[0] > 0.7
  assert "Visual clutter" in judge(items[0], items[1], "clutter").justification
  config = get_config("tiny")
  config.perception.update(judge="encoder", encoder="tests.evals.perception.fake_encoder:darkness",
                           principles=("clutter",))
  res = run_suite("perception", config, out_dir=str(tmp_path))["results"]["principles"]["clutter"]
  assert res["srocc_true_level"] > 0.7
  config.perception.encoder = ""
  with pytest.raises(ValueError, match="checkpoint: perception.judge='encoder'"):
    run_suite("perception", config, out_dir=str(tmp_path))
