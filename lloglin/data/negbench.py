"""NegBench items built from object annotations (per image, the names of the objects present):
Retrieval-Neg captions, MCQ-Neg questions, and the NegCap / NegMCQ fine-tuning records of the
synthetic scenes (lloglin.data.scenes). The negbench suite (lloglin.evals.negbench) evaluates a
dual encoder on the items; the contrastive task trains on the records.

Templates (docs/suites/negbench.md#templates): the retrieval negation is the paper's "There is no
X in the image." placed before or after the affirmative caption; the MCQ options follow the
official generator (A, B present, N absent): Affirmation "This image features A and B.",
Negation "This image does not feature N.", Hybrid "This image features B, but not N."; its three
distractors are the wrong hybrid "features N, but not B", the false affirmation "features N" and
the false negation "does not feature A". Every text is built from a `Statement` (what it says is
included and excluded), so `Statement.holds(objects)` decides its truth: a distractor never holds
and a negated object is never present (tests check both over seeds).

Negated objects are absent classes drawn with weight mean_i P(j | i) over the present classes i
(co-occurrence statistics of the annotations), so the negated object is a plausible one.

Training records: image-text sources of the contrastive task (lloglin.data.contrastive),
registered when this module is imported (lloglin.data imports it):

- `scenes`: one record per image, its affirmative caption (pretraining: no negation anywhere);
- `negcap`: NegCap, per image its affirmative caption (`keep_original`) and `num_negated`
  captions that add "there is no X"-style sentences about plausible absent objects;
- `negmcq`: the NegCap records, each also carrying a four-option MCQ-Neg set about its image
  (NegCap + NegMCQ: the paper's NegFull; `contrastive.alpha` mixes the two losses).

Settings: `data.scenes` (ScenesConfig). The three sources share one vocabulary (every word the
templates here can produce), so a model pretrained on one is fine-tuned on another and evaluated
by the negbench suite with the same token ids. The validation split is its own stream of scenes,
and the suite's test split a third.
"""

import dataclasses
import functools
from typing import Sequence

import numpy as np

from lloglin.data.contrastive import ImageTextData, ImageTextRecord, register_source, words_of
from lloglin.data.scenes import CLASSES, cooccurrence, make_scenes
from lloglin.data.sections import section_fields

QUESTION_TYPES = ("affirmation", "negation", "hybrid")
CAPTION_TEMPLATES = ("A photo of {objects}.", "There is {objects} in the image.",
                     "An image with {objects}.", "{Objects} on a dark background.")
RETRIEVAL_NEGATION = "There is no {object} in the image."
NEGCAP_NEGATIONS = (RETRIEVAL_NEGATION, "No {object} is present.",
                    "The image does not show {a_object}.", "There is not {a_object} here.")

# The PCA probe (the paper's Fig. 6): template categories, each with phrasings that differ only
# in wording; {a} / {b} are two objects with their articles, {x} the first without.
PROBE_TEMPLATES = {
    "affirmation": ("This image features {a}.", "This image includes {a}.",
                    "There is {a} in the image.", "A photo of {a}."),
    "negation": ("This image does not feature {a}.", "This image does not include {a}.",
                 "There is no {x} in the image.", "A photo without {a}."),
    "affirmation (2 objects)": ("This image features {a} and {b}.",
                                "This image includes {a} and {b}.",
                                "There is {a} and {b} in the image.", "A photo of {a} and {b}."),
    "hybrid": ("This image features {a}, but not {b}.", "This image includes {a} but not {b}.",
               "There is {a} but no {y} in the image.", "A photo of {a} without {b}."),
    "double negation": ("This image features neither {a} nor {b}.",
                        "This image includes neither {a} nor {b}.",
                        "There is neither {a} nor {b} in the image.",
                        "A photo without {a} or {b}."),
}
_PLAUSIBILITY_FLOOR = 1e-3  # any absent class can be drawn, the plausible ones far more often


def article(name: str) -> str:
  """'a circle', 'an hourglass' (a vowel sound: a vowel or a silent h first)."""
  an = name[:1].lower() in "aeiou" or name.lower().startswith(("hour", "honest", "honour"))
  return f"{'an' if an else 'a'} {name}"


def listing(names: Sequence[str]) -> str:
  """'a circle', 'a circle and a ring', 'a circle, a ring and a bar'."""
  items = [article(n) for n in names]
  return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


@dataclasses.dataclass(frozen=True)
class Statement:
  """What a text claims: these objects are in the image, those are not."""
  includes: tuple[str, ...] = ()
  excludes: tuple[str, ...] = ()

  @property
  def type(self) -> str:
    if not self.excludes:
      return "affirmation"
    return "negation" if not self.includes else "hybrid"

  def holds(self, objects) -> bool:
    present = set(objects)
    return present.issuperset(self.includes) and present.isdisjoint(self.excludes)

  def mcq_text(self) -> str:
    """The option's text, in the official generator's wording."""
    if not self.excludes:
      return f"This image features {listing(self.includes)}."
    if not self.includes:
      return f"This image does not feature {listing(self.excludes)}."
    return f"This image features {listing(self.includes)}, but not {listing(self.excludes)}."


def template_texts(classes: Sequence[str]) -> list[str]:
  """Texts holding every word the templates can produce with `classes` (the vocabulary of a
  word-level text tower trained and evaluated on them)."""
  x, y = classes[0], classes[-1]
  texts = [t.format(objects=listing(classes), Objects=listing(classes), object=x,
                    a_object=article(x), a=listing(classes), b=article(y), x=x, y=y)
           for t in (CAPTION_TEMPLATES + NEGCAP_NEGATIONS
                     + tuple(p for ps in PROBE_TEMPLATES.values() for p in ps))]
  texts += [Statement(tuple(classes)).mcq_text(), Statement((x,), (y,)).mcq_text(),
            Statement((), (x,)).mcq_text()]
  return texts + [listing([c]) for c in classes]


def affirmative_caption(objects: Sequence[str], rng: np.random.Generator) -> str:
  """A templated caption naming every object (in a random order)."""
  names = [objects[i] for i in rng.permutation(len(objects))]
  text = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
  listed = listing(names)
  return text.format(objects=listed, Objects=listed[:1].upper() + listed[1:])


def negation_sentence(obj: str, template: str = RETRIEVAL_NEGATION) -> str:
  return template.format(object=obj, a_object=article(obj))


def negated_caption(caption: str, obj: str, *, before: bool,
                    template: str = RETRIEVAL_NEGATION) -> str:
  """The caption with the negation sentence before or after it (the paper's two placements)."""
  sentence = negation_sentence(obj, template)
  return f"{sentence} {caption}" if before else f"{caption} {sentence}"


class Annotations:
  """Per image, the objects present (names of `classes`), checked; with the co-occurrence
  statistics P(j | i) of the classes, estimated from these annotations unless given."""

  def __init__(self, objects: Sequence[Sequence[str]], classes: Sequence[str],
               cooccurrence_CC: np.ndarray | None = None, *, what: str = "image"):
    self.classes = tuple(classes)
    self.index = {c: i for i, c in enumerate(self.classes)}
    if len(self.index) != len(self.classes) or not self.classes:
      raise ValueError(f"classes: expected distinct, non-empty class names, got {classes!r}")
    self.objects = []
    for n, objs in enumerate(objects):
      objs = tuple(objs)
      unknown = [o for o in objs if o not in self.index]
      if unknown:
        raise ValueError(f"{what} {n}: unknown object name(s) {unknown!r}; expected names of "
                         f"{list(self.classes)}")
      if not objs or len(set(objs)) != len(objs):
        raise ValueError(f"{what} {n}: expected a non-empty list of distinct objects, got "
                         f"{list(objs)!r}")
      self.objects.append(objs)
    labels_NC = np.zeros((len(self.objects), len(self.classes)), bool)
    for n, objs in enumerate(self.objects):
      labels_NC[n, [self.index[o] for o in objs]] = True
    self.labels_NC = labels_NC
    cooccurrence_CC = np.asarray(cooccurrence(labels_NC) if cooccurrence_CC is None
                                 else cooccurrence_CC, np.float64)
    if cooccurrence_CC.shape != (len(self.classes),) * 2:
      raise ValueError(f"cooccurrence_CC: expected shape {(len(self.classes),) * 2}, got "
                       f"{cooccurrence_CC.shape}")
    self.cooccurrence_CC = cooccurrence_CC

  def __len__(self) -> int:
    return len(self.objects)

  def negatives(self, n: int, k: int, rng: np.random.Generator) -> list[str]:
    """Up to k distinct classes absent from image n, drawn by plausibility (see the module)."""
    present = self.labels_NC[n]
    absent = np.flatnonzero(~present)
    if not len(absent) or k < 1:
      return []
    weight = self.cooccurrence_CC[np.ix_(present, absent)].mean(0) + _PLAUSIBILITY_FLOOR
    take = rng.choice(absent, size=min(k, len(absent)), replace=False, p=weight / weight.sum())
    return [self.classes[j] for j in take]


@dataclasses.dataclass(frozen=True)
class McqQuestion:
  image: int
  statements: tuple[Statement, ...]  # the options
  answer: int
  type: str  # the correct option's type

  @property
  def options(self) -> list[str]:
    return [s.mcq_text() for s in self.statements]

  @property
  def option_types(self) -> list[str]:
    return [s.type for s in self.statements]


def mcq_question(objects: Sequence[str], negative: str, qtype: str, image: int,
                 rng: np.random.Generator) -> McqQuestion:
  """One question of type `qtype` about an image holding `objects`, negating `negative`; the four
  options are shuffled."""
  if qtype not in QUESTION_TYPES:
    raise ValueError(f"qtype={qtype!r}: expected one of {QUESTION_TYPES}")
  pick = rng.permutation(len(objects))
  a, b = objects[pick[0]], objects[pick[min(1, len(objects) - 1)]]
  correct = {"affirmation": Statement(tuple(dict.fromkeys((a, b)))),
             "negation": Statement((), (negative,)),
             "hybrid": Statement((b,), (negative,))}[qtype]
  distractors = (Statement((negative,), (b,)), Statement((negative,)), Statement((), (a,)))
  statements = (correct,) + distractors
  order = rng.permutation(4)
  return McqQuestion(image, tuple(statements[i] for i in order), int(np.argmin(order)), qtype)


def mcq_questions(ann: Annotations, *, seed: int, per_image: int = 1) -> list[McqQuestion]:
  """Up to `per_image` questions per image (each with its own negated object), the question types
  cycling from a random start so that the three types are balanced."""
  rng = np.random.default_rng(seed)
  questions = []
  for n, objs in enumerate(ann.objects):
    start = rng.integers(3)
    for q, neg in enumerate(ann.negatives(n, per_image, rng)):
      questions.append(mcq_question(objs, neg, QUESTION_TYPES[(start + q) % 3], n, rng))
  return questions


@dataclasses.dataclass(frozen=True)
class RetrievalItem:
  image: int
  caption: str  # the affirmative caption
  negated_caption: str
  negated_object: str


def retrieval_items(ann: Annotations, *, seed: int, captions: Sequence[str] | None = None
                    ) -> list[RetrievalItem]:
  """Per image (with an absent class), its caption (`captions[n]`, or a templated one) and the
  Retrieval-Neg caption: the caption with "There is no N in the image." before or after it."""
  rng = np.random.default_rng(seed)
  items = []
  for n, objs in enumerate(ann.objects):
    caption = captions[n] if captions is not None else affirmative_caption(objs, rng)
    neg = ann.negatives(n, 1, rng)
    if neg:
      items.append(RetrievalItem(n, caption, negated_caption(caption, neg[0],
                                                             before=bool(rng.integers(2))), neg[0]))
  return items


def negcap_captions(objects: Sequence[str], ann: Annotations, n: int, rng: np.random.Generator,
                    num_negated: int) -> list[str]:
  """NegCap for one image: its affirmative caption and `num_negated` negated captions, each with a
  different plausible absent object, template and placement."""
  caption = affirmative_caption(objects, rng)
  out = [caption]
  for neg in ann.negatives(n, num_negated, rng):
    template = NEGCAP_NEGATIONS[rng.integers(len(NEGCAP_NEGATIONS))]
    out.append(negated_caption(caption, neg, before=bool(rng.integers(2)), template=template))
  return out


# The training records (module docstring).

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


for _kind in ("scenes", "negcap", "negmcq"):
  register_source(_kind, functools.partial(scene_records, kind=_kind))
