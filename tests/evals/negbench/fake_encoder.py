"""A bag-of-objects encoder for the negbench tests: an image is the set of classes whose colour it
shows, a text the class names it mentions (negated or not) plus one coordinate counting negation
words, each row scaled by a random factor (the suite must normalise). It has the affirmation bias
in its purest form: a negated object counts as present."""

import re

import numpy as np

from lloglin.data.scenes import CLASSES, COLOURS

NEGATIONS = ("not", "no", "without", "neither", "nor")


class BagOfObjects:
  image_size = 32

  def __init__(self, seed: int = 0):
    self._rng = np.random.default_rng(seed)

  def _scaled(self, x_ND):
    return x_ND * self._rng.uniform(0.5, 10.0, size=(len(x_ND), 1))

  def encode_images(self, images_NHWC):
    pixels = np.asarray(images_NHWC).reshape(len(images_NHWC), -1, 1, 3)
    seen_NC = (np.abs(pixels - COLOURS[None, None]).max(-1) <= 0.09).any(1)
    no_negation_N1 = np.zeros((len(seen_NC), 1))
    return self._scaled(np.concatenate([seen_NC, no_negation_N1], axis=1) + 1e-6)

  def encode_texts(self, texts):
    words = [re.findall(r"[a-z]+", t.lower()) for t in texts]
    bags = np.array([[w.count(c) for c in CLASSES + NEGATIONS] for w in words], np.float64)
    bags = np.concatenate([bags[:, :len(CLASSES)], bags[:, len(CLASSES):].sum(1, keepdims=True)],
                          axis=1)
    return self._scaled(bags + 1e-6)


def bag_of_objects(cfg):
  return BagOfObjects(cfg.seed)
