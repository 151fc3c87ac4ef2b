"""A synthetic image set with controlled clutter, symmetry and proximity, each image with its
true levels, for checking judges and the aggregation without human data.

An image holds `k` objects (discs and squares of random colours) in its left half around a
cluster centre and their mirror images in the right half. Levels, each "more of the principle"
when larger:
- clutter: the number of objects, 2k;
- symmetry: the fraction of mirror copies left in place (the others move to random positions of
  the right half and take a new colour): a target drawn from {0, 0.25, 0.5, 0.75, 1}, rounded
  to whole objects;
- proximity: minus the spread (px, at 64 px) of the objects around the cluster centre: closer
  objects group more strongly.
The three are drawn independently per image.
"""

import dataclasses

import numpy as np
import skimage.draw

LEVEL_NAMES = ("clutter", "symmetry", "proximity")


@dataclasses.dataclass(frozen=True)
class Item:
  """One image to judge: id, image [H, W, 3] uint8 RGB, true levels by principle (may be empty),
  human score and category (None for the synthetic set)."""
  id: str
  image: np.ndarray
  levels: dict
  human: float | None = None
  category: str | None = None


def make_images(num_images: int, *, image_size: int = 64, max_pairs: int = 10,
                seed: int = 0) -> list[Item]:
  """num_images synthetic Items (module docstring); max_pairs: the most mirrored object pairs."""
  if num_images < 2:
    raise ValueError(f"num_images: expected >= 2, got {num_images}")
  if image_size < 32:
    raise ValueError(f"image_size: expected >= 32 px, got {image_size}")
  if max_pairs < 1:
    raise ValueError(f"max_pairs: expected >= 1, got {max_pairs}")
  rng = np.random.default_rng(seed)
  items = []
  for n in range(num_images):
    pairs = int(rng.integers(1, max_pairs + 1))
    moved = round((1 - float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]))) * pairs)
    spread = float(rng.uniform(0.05, 0.25)) * image_size
    image = _draw(rng, image_size, pairs, moved, spread)
    items.append(Item(f"synthetic_{n:04d}", image,
                      {"clutter": 2.0 * pairs, "symmetry": 1 - moved / pairs,
                       "proximity": -spread * 64 / image_size}))
  return items


def _draw(rng, size: int, pairs: int, num_moved: int, spread: float) -> np.ndarray:
  image_HWC = np.full((size, size, 3), 255, dtype=np.uint8)
  radius = max(2, size // 20)
  half = size // 2
  centre = rng.uniform([radius * 2, radius * 2], [size - radius * 2, half - radius * 2])
  moved = set(rng.permutation(pairs)[:num_moved].tolist())
  for k in range(pairs):
    r, c = np.clip(centre + rng.normal(0, spread, 2), radius, [size - radius - 1, half - radius])
    colour = rng.integers(0, 200, 3)
    square = rng.random() < 0.5
    _shape(image_HWC, r, c, radius, square, colour)
    if k in moved:
      r, c = rng.uniform([radius, half + radius], [size - radius - 1, size - radius - 1])
      _shape(image_HWC, r, c, radius, square, rng.integers(0, 200, 3))
    else:
      _shape(image_HWC, r, c, radius, square, colour, mirror=True)
  return image_HWC


def _shape(image_HWC, r, c, radius, square, colour, mirror=False):
  """Draws a disc or square centred on whole pixels, so its mirror image is exact."""
  r, c = round(r), round(c)
  if mirror:
    c = image_HWC.shape[1] - 1 - c
  if square:
    rows, cols = skimage.draw.rectangle((r - radius, c - radius),
                                        extent=(2 * radius + 1, 2 * radius + 1),
                                        shape=image_HWC.shape[:2])
  else:
    rows, cols = skimage.draw.disk((r, c), radius, shape=image_HWC.shape[:2])
  image_HWC[np.asarray(rows, int), np.asarray(cols, int)] = colour
