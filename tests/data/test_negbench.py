"""lloglin.data.negbench: template rendering, and over seeds the truth of every option and negation
against the image's objects."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lloglin.data.negbench import (QUESTION_TYPES, Annotations, Statement, listing, mcq_question,
                                   mcq_questions, negated_caption, negcap_captions, retrieval_items)
from lloglin.data.scenes import CLASSES, make_scenes


@pytest.fixture(scope="module")
def annotations():
  return Annotations(make_scenes(120, seed=0, split="test").objects, CLASSES)


def test_templates():
  assert listing(["circle"]) == "a circle"
  assert listing(["ring", "hourglass", "ant"]) == "a ring, an hourglass and an ant"
  assert Statement(("circle", "ring")).mcq_text() == "This image features a circle and a ring."
  assert Statement((), ("bar",)).mcq_text() == "This image does not feature a bar."
  assert Statement(("ring",), ("bar",)).mcq_text() == "This image features a ring, but not a bar."
  assert [Statement(("a",)).type, Statement((), ("b",)).type, Statement(("a",), ("b",)).type] \
      == list(QUESTION_TYPES)
  assert negated_caption("A photo of a ring.", "bar", before=True) \
      == "There is no bar in the image. A photo of a ring."
  assert negated_caption("A photo of a ring.", "bar", before=False) \
      == "A photo of a ring. There is no bar in the image."


def test_repo_generator_options():
  rng = np.random.default_rng(0)
  q = mcq_question(("circle", "ring"), "bar", "hybrid", 7, rng)
  texts = set(q.options)
  b = q.statements[q.answer].includes[0]
  a = "circle" if b == "ring" else "ring"
  assert texts == {f"This image features a {b}, but not a bar.",
                   f"This image features a bar, but not a {b}.", "This image features a bar.",
                   f"This image does not feature a {a}."}
  assert q.type == "hybrid" and q.image == 7 and sorted(q.option_types) == sorted(
      ["hybrid", "hybrid", "affirmation", "negation"])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), per_image=st.integers(1, 3))
def test_options_and_negations_are_true_only_where_they_should_be(annotations, seed, per_image):
  questions = mcq_questions(annotations, seed=seed, per_image=per_image)
  for q in questions:
    objects = annotations.objects[q.image]
    truth = [s.holds(objects) for s in q.statements]
    assert truth == [i == q.answer for i in range(4)], (objects, q.options)
    mentioned = {o for s in q.statements for o in s.includes + s.excludes}
    assert len(mentioned - set(objects)) == 1  # the question's one negated object, absent
    assert set(q.statements[q.answer].excludes).isdisjoint(objects)
  # Each image's questions cycle through the types from a random start: distinct within an image,
  # balanced over images in expectation (a loose bound: each type's share is 1/3 +- 0.05 sd here).
  by_image = {}
  for q in questions:
    by_image.setdefault(q.image, []).append(QUESTION_TYPES.index(q.type))
  for types in by_image.values():
    assert all((b - a) % 3 == 1 for a, b in zip(types, types[1:])), types
  counts = np.unique([q.type for q in questions], return_counts=True)[1]
  assert len(counts) == 3 and counts.min() >= 0.15 * len(questions)
  for item in retrieval_items(annotations, seed=seed):
    assert item.negated_object not in annotations.objects[item.image]
    assert item.caption in item.negated_caption and item.negated_object in item.negated_caption
  caps = negcap_captions(annotations.objects[0], annotations, 0, np.random.default_rng(seed), 3)
  assert len(caps) == 4 and all(caps[0] in c for c in caps[1:])


def test_negatives_follow_cooccurrence():
  # circle always comes with ring, never with bar: the circle image's negative is ring
  ann = Annotations([("circle", "ring"), ("circle", "ring"), ("bar",), ("circle",)],
                    ("circle", "ring", "bar"))
  picks = [ann.negatives(3, 1, np.random.default_rng(s))[0] for s in range(200)]
  assert picks.count("ring") > 190
  assert ann.negatives(0, 3, np.random.default_rng(0)) == ["bar"]


def test_bad_annotations():
  with pytest.raises(ValueError, match=r"image 1: unknown object name\(s\) \['dog'\]"):
    Annotations([("circle",), ("dog",)], CLASSES)
  with pytest.raises(ValueError, match="image 0: expected a non-empty list"):
    Annotations([()], CLASSES)
  with pytest.raises(ValueError, match="cooccurrence_CC"):
    Annotations([("circle",)], CLASSES, np.eye(3))
