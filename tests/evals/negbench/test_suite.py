"""The negbench suite end to end with the bag-of-objects encoder (tests/evals/negbench/
fake_encoder.py), whose results follow from the data by construction."""

import json

import pytest

from configs.negbench import get_config
from lloglin.evals import run_suite

PNG = b"\x89PNG\r\n\x1a\n"
FAKE = "tests.evals.negbench.fake_encoder:bag_of_objects"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  config = get_config("tiny")
  config.negbench.encoder = FAKE
  out = tmp_path_factory.mktemp("negbench")
  run_suite("negbench", config, out_dir=str(out))
  return out, json.loads((out / "report.json").read_text())


def test_report_and_figures(report):
  out, saved = report
  assert saved["suite"] == "negbench"
  assert sorted(saved["figures"]) == ["mcq.png", "pca.png", "retrieval.png"]
  for name in saved["figures"]:
    assert (out / name).read_bytes()[:8] == PNG


def test_affirmation_bias_of_a_bag_of_objects(report):
  results = report[1]["results"]
  m = results["mcq"]
  assert m["num_questions"] == 48 and sum(m["count"].values()) == 48
  # an affirmation is (part of) the image's bag and has no negation word: always the best option;
  # a negation's object is absent from the image, while the false negation "does not feature A"
  # names a present one
  assert m["per_type"]["affirmation"] == 1.0
  assert m["per_type"]["negation"] == 0.0
  assert m["chosen_type"]["negation"]["negation"] == 1.0  # it picks the false negation
  assert m["wrong_choice"]["negation"]["negation"] == m["count"]["negation"]
  assert m["wrong_choice"]["affirmation"] == {"affirmation": 0, "negation": 0, "hybrid": 0}
  r = results["retrieval"]
  assert r["original"]["R@1"] == 1.0  # the caption's bag is its image's bag
  assert r["negated"]["R@1"] < 1.0  # the negated object counts as present
  assert r["negated"]["R@10"] >= r["negated"]["R@5"] >= r["negated"]["R@1"]
  # each probe negation is its affirmation's bag plus one negation word
  assert results["probe"]["affirmation_negation_cosine"] == pytest.approx(0.5**0.5, abs=1e-4)


def test_bad_settings(tmp_path):
  config = get_config("tiny")
  config.negbench.questions_per_image = 4
  with pytest.raises(ValueError, match="questions_per_image"):
    run_suite("negbench", config, out_dir=str(tmp_path))
  config = get_config("tiny")
  with pytest.raises(ValueError, match="checkpoint"):
    run_suite("negbench", config, out_dir=str(tmp_path))


def test_config_variants():
  c = get_config("negmcq_a0.9_gdn")
  assert (c.data.source, c.contrastive.alpha, c.model.layer_pattern) == ("negmcq", 0.9, "gdn")
  c = get_config("negcap")
  assert (c.data.source, c.contrastive.alpha, c.model.layer_pattern) == ("negcap", 1.0,
                                                                        "attention")
  assert get_config("pretrain").data.source == "scenes" and get_config().suite == "negbench"
  with pytest.raises(ValueError, match="unknown variant 'negmcq_a0.3'.*valid"):
    get_config("negmcq_a0.3")
