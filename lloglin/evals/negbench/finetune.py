"""Training data of the NegBench experiment from the synthetic scenes, as image-text sources of
the contrastive task (lloglin.data.contrastive; registered by lloglin.data.scenes):

- `scenes`: one record per image, its affirmative caption (pretraining: no negation anywhere);
- `negcap`: NegCap, per image its affirmative caption (`keep_original`) and `num_negated`
  captions that add "there is no X"-style sentences about plausible absent objects;
- `negmcq`: the NegCap records, each also carrying a four-option MCQ-Neg set about its image
  (NegCap + NegMCQ: the paper's NegFull; `contrastive.alpha` mixes the two losses).

Settings: `data.scenes` (ScenesConfig). The three sources share one vocabulary (every word the
templates of lloglin.evals.negbench.builders can produce), so a model pretrained on one is
fine-tuned on another and evaluated by the negbench suite with the same token ids. The
validation split is its own stream of scenes, and the suite's test split a third.
"""

import dataclasses

import numpy as np

from lloglin.data.contrastive import ImageTextData, ImageTextRecord, words_of
from lloglin.data.scenes import CLASSES, make_scenes
from lloglin.data.sections import section_fields
from lloglin.evals.negbench.builders import (QUESTION_TYPES, Annotations, affirmative_caption,
                                             mcq_question, negcap_captions, template_texts)

_SPLIT_SEED = {"train": 0, "validation": 1}  # the contrastive task's splits; the suite uses test


@dataclasses.dataclass(frozen=True)
class ScenesConfig:
  """`data.scenes` (every field optional there)."""
  image_size: int = 32
  num_train_images: int = 4000
  num_val_images: int = 256
  off_context_weight: float = 0.1  # lloglin.data.scenes.make_scenes
  num_negated: int = 2  # negcap / negmcq: negated captions per image, one record each
  keep_original: bool = True  # negcap / negmcq: the affirmative caption is a record too


def scenes_config(data_cfg) -> ScenesConfig:
  cfg = ScenesConfig(**section_fields(data_cfg, "scenes", ScenesConfig, "data.scenes"))
  for name in ("num_train_images", "num_val_images"):
    if getattr(cfg, name) < 1:
      raise ValueError(f"data.scenes.{name}={getattr(cfg, name)}; expected >= 1")
  if cfg.num_negated < 0 or cfg.num_negated + cfg.keep_original < 1:
    raise ValueError(f"data.scenes.num_negated={cfg.num_negated} with keep_original="
                     f"{cfg.keep_original}: expected at least one caption per image")
  return cfg


def vocabulary() -> list[str]:
  """The words of every text the negbench templates make with the scene classes."""
  return list(dict.fromkeys(w for t in template_texts(CLASSES) for w in words_of(t)))


def scene_records(data_cfg, *, split: str, seed: int, kind: str) -> ImageTextData:
  """The records of source `kind` (scenes | negcap | negmcq; module docstring)."""
  cfg = scenes_config(data_cfg)
  if split not in _SPLIT_SEED:
    raise ValueError(f"split={split!r}: expected one of {tuple(_SPLIT_SEED)}")
  num = cfg.num_train_images if split == "train" else cfg.num_val_images
  scenes = make_scenes(num, seed=seed, split=split, image_size=cfg.image_size,
                       off_context_weight=cfg.off_context_weight)
  ann = Annotations(scenes.objects, CLASSES)
  rng = np.random.default_rng([_SPLIT_SEED[split], seed, len(kind)])
  records = []
  for n, objects in enumerate(scenes.objects):
    image = scenes.images_NHWC[n]
    if kind == "scenes":
      records.append(ImageTextRecord(image, affirmative_caption(objects, rng)))
      continue
    captions = negcap_captions(objects, ann, n, rng, cfg.num_negated)
    captions = captions if cfg.keep_original else captions[1:]
    start = int(rng.integers(3))
    for k, caption in enumerate(captions):
      options, answer = (), None
      if kind == "negmcq":
        negative = ann.negatives(n, 1, rng)
        if not negative:  # every class is present: no question about this image
          continue
        q = mcq_question(objects, negative[0], QUESTION_TYPES[(start + k) % 3], n, rng)
        options, answer = tuple(q.options), q.answer
      records.append(ImageTextRecord(image, caption, options, answer))
  return ImageTextData(records, words=vocabulary(), what=f"{kind} {split} records")


SOURCES = {kind: lambda data_cfg, *, split, seed, kind=kind: scene_records(
    data_cfg, split=split, seed=seed, kind=kind) for kind in ("scenes", "negcap", "negmcq")}
