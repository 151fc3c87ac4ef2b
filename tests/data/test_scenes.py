"""lloglin.data.scenes: determinism, the object lists against the pixels, co-occurrence."""

import numpy as np
import pytest

from lloglin.data.scenes import CLASSES, COLOURS, CONTEXTS, class_masks, cooccurrence, make_scenes


@pytest.fixture(scope="module")
def scenes():
  return make_scenes(400, seed=3)


def test_deterministic_and_seeded(scenes):
  again = make_scenes(400, seed=3)
  np.testing.assert_array_equal(scenes.images_NHWC, again.images_NHWC)
  assert scenes.objects == again.objects
  assert make_scenes(400, seed=4).objects != scenes.objects
  assert make_scenes(400, seed=3, split="test").objects != scenes.objects


def test_labels_match_objects_and_pixels(scenes):
  images = scenes.images_NHWC
  assert images.shape == (400, 32, 32, 3) and images.dtype == np.float32
  assert 0 <= images.min() and images.max() <= 1
  counts = scenes.labels_NC.sum(1)
  assert set(counts) == {1, 2, 3}
  for n, objects in enumerate(scenes.objects):
    assert len(set(objects)) == len(objects) == counts[n]
    assert set(objects) == {CLASSES[c] for c in np.flatnonzero(scenes.labels_NC[n])}
    # every object's colour is in the image (within the jitter), no absent class's is
    dist_C = np.abs(images[n].reshape(-1, 1, 3) - COLOURS[None]).max(-1).min(0)
    present = scenes.labels_NC[n]
    assert (dist_C[present] <= 0.09).all()
    assert (dist_C[~present] > 0.09).all(), (n, objects, dist_C)


def test_glyphs_are_distinct():
  masks = class_masks(12).reshape(len(CLASSES), -1)
  assert masks.sum(1).min() > 20
  assert len({m.tobytes() for m in masks}) == len(CLASSES)


def test_cooccurrence_follows_contexts(scenes):
  p_CC = cooccurrence(scenes.labels_NC)
  np.testing.assert_allclose(np.diag(p_CC), 1.0)
  same = np.zeros_like(p_CC, bool)
  for members in CONTEXTS:
    idx = [CLASSES.index(m) for m in members]
    same[np.ix_(idx, idx)] = True
  np.fill_diagonal(same, False)
  other = ~same
  np.fill_diagonal(other, False)
  assert p_CC[same].mean() > 2 * p_CC[other].mean()
  # a hand-made fixture: P(j | i) = count(i and j) / count(i)
  labels = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]], bool)
  np.testing.assert_allclose(cooccurrence(labels), [[1, .5, 0], [.5, 1, .5], [0, 1, 1]])


@pytest.mark.parametrize("name,kwargs", [("num", {"num": 0}), ("image_size", {"image_size": 8}),
                                         ("off_context_weight", {"off_context_weight": 0.0}),
                                         ("split", {"split": "dev"})])
def test_bad_arguments(name, kwargs):
  with pytest.raises(ValueError, match=name):
    make_scenes(**{"num": 2, "seed": 0, **kwargs})
