"""The scenes' image-text sources (scenes, negcap, negmcq) of the contrastive task, and the suite
on a real (untrained) dual encoder export."""

import json
import re

import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs.negbench import get_config
from lloglin.data.contrastive import make_contrastive_dataset
from lloglin.data.negbench import scene_records
from lloglin.data.scenes import CLASSES, make_scenes
from lloglin.evals import run_suite
from lloglin.evals.negbench.encoder import checkpoint_encoder
from lloglin.training import export, trainer

NEGATION = re.compile(r"\b(no|not)\b")


def _data_cfg(**scenes):
  return ml_collections.ConfigDict({"scenes": {"num_train_images": 12, "num_val_images": 4,
                                               **scenes}})


def _classes(text):
  return {c for c in CLASSES if re.search(rf"\b{c}\b", text.lower())}


def _mentions(text):
  """(objects named before the first negation word, objects named after it)."""
  m = NEGATION.search(text.lower())
  return (_classes(text[:m.start()]), _classes(text[m.end():])) if m else (_classes(text), set())


def test_records_are_true_of_their_images():
  cfg = _data_cfg(num_negated=2)
  objects = make_scenes(12, seed=3, split="train").objects
  for kind, per_image in (("scenes", 1), ("negcap", 3), ("negmcq", 3)):
    data = scene_records(cfg, split="train", seed=3, kind=kind)
    assert len(data.records) == 12 * per_image, kind
    for i, r in enumerate(data.records):
      present = set(objects[i // per_image])
      if i % per_image == 0:  # the affirmative caption names exactly the objects
        assert not NEGATION.search(r.caption) and _mentions(r.caption)[0] == present
      else:  # NegCap: that caption plus a sentence negating a plausible absent object
        original = data.records[i - i % per_image].caption
        assert original in r.caption and NEGATION.search(r.caption.lower())
        negated = _classes(r.caption) - _classes(original)
        assert len(negated) == 1 and negated.isdisjoint(present), r.caption
      if kind == "negmcq":
        assert len(r.options) == 4
        for k, option in enumerate(r.options):
          said, denied = _mentions(option)
          true = said <= present and denied.isdisjoint(present)
          assert true == (k == r.answer), (present, option)
      else:
        assert r.options == () and r.answer is None


def test_sources_share_the_vocabulary_and_batch():
  tokenizers = []
  for source in ("scenes", "negcap", "negmcq"):
    cfg = _data_cfg()
    cfg.source = source
    ds = make_contrastive_dataset(cfg, split="validation", seq_len=32, batch_size=4, seed=0,
                                  require_options=source == "negmcq")
    batch = next(ds)
    assert batch["images"].shape == (4, 32, 32, 3)
    tokenizers.append(ds.tokenizer.words)
  assert tokenizers[0] == tokenizers[1] == tokenizers[2]
  with pytest.raises(ValueError, match="data.scenes: unknown option"):
    scene_records(_data_cfg(colours=3), split="train", seed=0, kind="negcap")


@pytest.fixture(scope="module")
def untrained_export(tmp_path_factory):
  cfg = get_config("tiny")
  model, mcfg = trainer.init_model(cfg, vocab_size=len(make_contrastive_dataset(
      cfg.data, split="validation", seq_len=cfg.seq_len, batch_size=2, seed=0).tokenizer.words))
  path = str(tmp_path_factory.mktemp("dual") / "export")
  export.export_params(path, nnx.state(model, nnx.Param),
                       dict(cfg.to_dict(), model=mcfg.to_dict()))
  return path, cfg


def test_suite_on_a_dual_encoder_export(untrained_export, tmp_path):
  path, cfg = untrained_export
  encoder = checkpoint_encoder(path, batch_size=cfg.negbench.batch_size)
  texts = ["There is no ring in the image.", "A photo of a bar.", "This image features a cross."]
  one = encoder.encode_texts(texts)
  np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(encoder.encode_texts(texts[1:2])[0], one[1], rtol=1e-5, atol=1e-6)
  run_suite("negbench", cfg, checkpoint=path, out_dir=str(tmp_path))
  results = json.loads((tmp_path / "report.json").read_text())["results"]
  assert results["mcq"]["num_questions"] == cfg.negbench.num_images
  assert 0 <= results["retrieval"]["negated"]["R@5"] <= 1
