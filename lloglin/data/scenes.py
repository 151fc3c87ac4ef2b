"""Synthetic scenes: small RGB images holding 1 to 3 coloured glyphs of ten object classes, with
each image's object list and the co-occurrence statistics of the classes (the offline stand-in for
COCO's object annotations in NegBench, arXiv 2501.09425; docs/suites/negbench.md).

Each class is one shape in one colour (`CLASSES`, `COLOURS`), so a class name is one word. An
image draws a context (`CONTEXTS`: classes that tend to appear together), a number of objects
(1, 2 or 3) and that many distinct classes, each from its context with weight 1 and from the
others with weight `off_context_weight`; so some classes co-occur often and an absent class that
often accompanies the present ones is a plausible negative. Objects sit in distinct quadrants with
a random offset and a small colour jitter on a dark, noisy background. Everything is vectorised
numpy and deterministic from (seed, number of images, image size).
"""

import dataclasses

import numpy as np

CLASSES = ("circle", "ring", "square", "frame", "triangle", "diamond", "cross", "bar", "pillar",
           "hourglass")
COLOURS = np.array([  # one RGB colour per class, in [0, 1]
    [0.95, 0.20, 0.20], [0.20, 0.90, 0.95], [0.25, 0.35, 0.95], [0.95, 0.95, 0.95],
    [0.20, 0.85, 0.25], [0.95, 0.25, 0.90], [0.95, 0.90, 0.20], [0.98, 0.55, 0.10],
    [0.60, 0.30, 0.95], [0.65, 0.95, 0.55]], np.float32)
CONTEXTS = (("circle", "ring", "diamond", "square"), ("square", "frame", "cross"),
            ("triangle", "hourglass", "bar"), ("pillar", "bar", "cross", "ring"))
NUM_OBJECTS_P = (0.3, 0.4, 0.3)  # P(1, 2, 3 objects)
SPLITS = ("train", "validation", "test")  # disjoint streams of scenes for one seed
_STREAM = 0x5C3E  # keeps scene seeds apart from the other generators'


@dataclasses.dataclass(frozen=True)
class Scenes:
  """images_NHWC: float32 in [0, 1]; labels_NC: bool, class c present in image n; objects: each
  image's class names, in the order they were drawn."""
  images_NHWC: np.ndarray
  labels_NC: np.ndarray
  objects: list[tuple[str, ...]]

  def __len__(self) -> int:
    return len(self.objects)


def class_masks(size: int) -> np.ndarray:
  """[len(CLASSES), size, size] bool: each class's glyph on a size x size canvas."""
  v, u = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
  r2, au, av = u**2 + v**2, np.abs(u), np.abs(v)
  box = np.maximum(au, av)
  shapes = {
      "circle": r2 <= 0.8,
      "ring": (r2 >= 0.3) & (r2 <= 0.9),
      "square": box <= 0.75,
      "frame": (box >= 0.5) & (box <= 0.9),
      "triangle": (v >= -0.85) & (v <= 0.8) & (au <= (v + 0.85) * 0.6),
      "diamond": au + av <= 0.95,
      "cross": ((au <= 0.25) & (av <= 0.9)) | ((av <= 0.25) & (au <= 0.9)),
      "bar": (av <= 0.3) & (au <= 0.95),
      "pillar": (au <= 0.3) & (av <= 0.95),
      "hourglass": (av >= au) & (av <= 0.9),
  }
  return np.stack([shapes[c] for c in CLASSES])


def class_weights(off_context_weight: float) -> np.ndarray:
  """[len(CONTEXTS), len(CLASSES)]: the sampling weight of each class under each context."""
  w = np.full((len(CONTEXTS), len(CLASSES)), off_context_weight, np.float64)
  for k, members in enumerate(CONTEXTS):
    w[k, [CLASSES.index(m) for m in members]] = 1.0
  return w


def make_scenes(num: int, *, seed: int, split: str = "train", image_size: int = 32,
                off_context_weight: float = 0.1) -> Scenes:
  """`num` scenes of image_size x image_size pixels, deterministic from the arguments; the
  splits of one seed are independent draws."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: expected one of {SPLITS}")
  if not isinstance(num, int) or num < 1:
    raise ValueError(f"num={num!r}: expected a positive int")
  if not isinstance(image_size, int) or image_size < 16:
    raise ValueError(f"image_size={image_size!r}: expected an int >= 16")
  if not 0 < off_context_weight <= 1:
    raise ValueError(f"off_context_weight={off_context_weight!r}: expected a value in (0, 1]")
  rng = np.random.default_rng([_STREAM, SPLITS.index(split), seed])
  num_classes = len(CLASSES)
  context_N = rng.integers(len(CONTEXTS), size=num)
  count_N = rng.choice(3, size=num, p=NUM_OBJECTS_P) + 1
  # n distinct classes by weight: the n largest of log w + Gumbel noise (sampling without
  # replacement, all images at once).
  keys_NC = np.log(class_weights(off_context_weight)[context_N]) + rng.gumbel(
      size=(num, num_classes))
  drawn_N3 = np.argsort(-keys_NC, axis=1)[:, :3]
  valid_N3 = np.arange(3)[None] < count_N[:, None]
  labels_NC = np.zeros((num, num_classes), bool)
  rows = np.repeat(np.arange(num), 3)[valid_N3.ravel()]
  labels_NC[rows, drawn_N3[valid_N3]] = True
  objects = [tuple(CLASSES[c] for c in drawn[:k]) for drawn, k in zip(drawn_N3, count_N)]
  images = _render(rng, drawn_N3, valid_N3, image_size)
  return Scenes(images, labels_NC, objects)


def _render(rng, drawn_N3, valid_N3, image_size: int) -> np.ndarray:
  num = len(drawn_N3)
  half = image_size // 2
  glyph = image_size * 3 // 8
  masks = class_masks(glyph)
  level_N = rng.uniform(0.0, 0.25, size=(num, 1, 1, 1))
  images = level_N + rng.normal(0, 0.03, size=(num, image_size, image_size, 3))
  # distinct quadrants per image (a random permutation of the four) and an offset inside each
  quadrant_N3 = np.argsort(rng.random((num, 4)), axis=1)[:, :3]
  offset_N32 = rng.integers(0, half - glyph + 1, size=(num, 3, 2))
  colour_N33 = COLOURS[drawn_N3] + rng.uniform(-0.08, 0.08, size=(num, 3, 3))
  idx_G = np.arange(glyph)
  for k in range(3):
    n = np.flatnonzero(valid_N3[:, k])
    top = (quadrant_N3[n, k] // 2) * half + offset_N32[n, k, 0]
    left = (quadrant_N3[n, k] % 2) * half + offset_N32[n, k, 1]
    rows_nGG = (top[:, None] + idx_G)[:, :, None]
    cols_nGG = (left[:, None] + idx_G)[:, None, :]
    patch = images[n[:, None, None], rows_nGG, cols_nGG]
    mask = masks[drawn_N3[n, k]][..., None]
    images[n[:, None, None], rows_nGG, cols_nGG] = np.where(mask, colour_N33[n, k, None, None],
                                                            patch)
  return np.clip(images, 0.0, 1.0).astype(np.float32)


def cooccurrence(labels_NC: np.ndarray) -> np.ndarray:
  """[C, C] float64: P(class j present | class i present), estimated from the labels (row i is
  zero for a class that never appears; the diagonal is 1 for the others)."""
  labels = np.asarray(labels_NC, np.float64)
  if labels.ndim != 2:
    raise ValueError(f"labels_NC: expected a [num_images, num_classes] array, got shape "
                     f"{labels.shape}")
  counts_CC = labels.T @ labels
  seen_C = np.diag(counts_CC)
  return np.divide(counts_CC, seen_C[:, None], out=np.zeros_like(counts_CC),
                   where=seen_C[:, None] > 0)

