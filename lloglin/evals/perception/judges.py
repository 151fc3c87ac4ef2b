"""Judges compare two images on one principle: `judge(a, b, principle) -> Judgement` with a and b
synthetic.Item's. The pair sampler and the loop that runs a judge over pairs live here too.

- NoisyOracleJudge: knows the true levels (the synthetic set) and flips its answer with
  probability `flip`; its rng is seeded by (seed, the two ids, the principle), so a judgement does
  not depend on the order the pairs are judged in.
- EncoderJudge: a dual encoder's image-text similarity to each principle's description.
- MeasureJudge: compares a computed measure of each image, for the principles that have one
  (MEASURES): clutter as edge density (scikit-image's Canny), symmetry as the correlation of the
  image with its left-right mirror, simplicity as minus the PNG size per pixel (Pillow's zlib).
"""

import concurrent.futures
import dataclasses
import io
import zlib

import numpy as np
import skimage.color
import skimage.feature
from PIL import Image

from lloglin.evals.negbench.metrics import normalize
from lloglin.evals.perception.principles import PRINCIPLES
from lloglin.evals.perception.principles import principle as check_principle
from lloglin.evals.report import progress

WINNERS = ("A", "B", "tie")


@dataclasses.dataclass(frozen=True)
class Judgement:
  """winner: "A" (the first image shows more of the principle), "B" or "tie"."""
  winner: str
  justification: str

  def __post_init__(self):
    if self.winner not in WINNERS:
      raise ValueError(f"winner: expected one of {WINNERS}, got {self.winner!r}")

  @property
  def result(self) -> float:
    """1 if A won, 0 if B won, 0.5 for a tie (aggregate.outcome_matrix's results)."""
    return {"A": 1.0, "B": 0.0, "tie": 0.5}[self.winner]


def _compare(value_a: float, value_b: float, tol: float) -> str:
  if abs(value_a - value_b) <= tol * max(abs(value_a), abs(value_b)):
    return "tie"
  return "A" if value_a > value_b else "B"


class NoisyOracleJudge:
  """Prefers the image with the higher true level; the answer flips with probability `flip`
  (a tie stays a tie)."""

  def __init__(self, flip: float = 0.0, seed: int = 0):
    if not 0 <= flip <= 1:
      raise ValueError(f"flip: expected a probability in [0, 1], got {flip}")
    self.flip, self.seed = flip, seed

  def __call__(self, a, b, principle: str) -> Judgement:
    for item in (a, b):
      if principle not in item.levels:
        raise ValueError(f"{item.id}: no true level for principle {principle!r} (has "
                         f"{sorted(item.levels)})")
    winner = _compare(a.levels[principle], b.levels[principle], 0.0)
    rng = np.random.default_rng([self.seed] + [zlib.crc32(s.encode())
                                               for s in (a.id, b.id, principle)])
    flipped = winner != "tie" and rng.random() < self.flip
    if flipped:
      winner = "B" if winner == "A" else "A"
    return Judgement(winner, f"oracle: true levels {a.levels[principle]:g} vs "
                             f"{b.levels[principle]:g}{' (flipped)' if flipped else ''}")


def _gray(image_HWC) -> np.ndarray:
  return skimage.color.rgb2gray(np.asarray(image_HWC))


def edge_density(image_HWC) -> float:
  """The fraction of pixels on a Canny edge (sigma 1): more edges, more clutter."""
  return float(skimage.feature.canny(_gray(image_HWC), sigma=1.0).mean())


def mirror_correlation(image_HWC) -> float:
  """Pearson correlation of the grey image with its left-right mirror (1: mirror-symmetric)."""
  g = _gray(image_HWC).ravel()
  m = np.fliplr(_gray(image_HWC)).ravel()
  if np.ptp(g) == 0:
    return 1.0
  return float(np.corrcoef(g, m)[0, 1])


def compressibility(image_HWC) -> float:
  """Minus the lossless PNG size in bits per pixel (Pillow, zlib level 9): simpler is larger."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image_HWC, dtype=np.uint8)).save(buf, format="PNG", compress_level=9)
  return -8.0 * buf.tell() / (image_HWC.shape[0] * image_HWC.shape[1])


MEASURES = {"clutter": edge_density, "symmetry": mirror_correlation,
            "simplicity": compressibility}


class MeasureJudge:
  """Compares MEASURES[principle] of the two images; a relative difference <= tol is a tie.
  Each image's measure is computed once (cached by id)."""

  def __init__(self, tol: float = 0.0):
    self.tol = tol
    self._cache: dict[tuple[str, str], float] = {}

  def measure(self, item, principle: str) -> float:
    if principle not in MEASURES:
      raise ValueError(f"principle: no computed measure for {principle!r}; measured: "
                       f"{', '.join(MEASURES)}")
    key = (item.id, principle)
    if key not in self._cache:
      self._cache[key] = MEASURES[principle](item.image)
    return self._cache[key]

  def __call__(self, a, b, principle: str) -> Judgement:
    va, vb = self.measure(a, principle), self.measure(b, principle)
    return Judgement(_compare(va, vb, self.tol),
                     f"{MEASURES[principle].__name__}: A {va:.4g}, B {vb:.4g}")


def sample_pairs(num_items: int, *, per_image: int | None = None, seed: int = 0) -> np.ndarray:
  """[P, 2] image indices to compare, each pair once in a random A/B order.

  per_image=None: all pairs; else a budget balanced per image: ceil(per_image / 2) random cycles
  through all images (each cycle gives every image two opponents), repeated pairs dropped."""
  if num_items < 2:
    raise ValueError(f"num_items: expected >= 2, got {num_items}")
  rng = np.random.default_rng(seed)
  if per_image is None:
    pairs = [(i, j) for i in range(num_items) for j in range(i + 1, num_items)]
  else:
    if per_image < 1:
      raise ValueError(f"per_image: expected >= 1 (or None for all pairs), got {per_image}")
    pairs = set()
    for _ in range(-(-per_image // 2)):
      cycle = rng.permutation(num_items)
      pairs.update(tuple(sorted((int(cycle[k]), int(cycle[(k + 1) % num_items]))))
                   for k in range(num_items))
    pairs = sorted(pairs)
  pairs_P2 = np.array(pairs, dtype=np.int64).reshape(-1, 2)
  swap_P = rng.random(len(pairs_P2)) < 0.5
  pairs_P2[swap_P] = pairs_P2[swap_P][:, ::-1]
  return pairs_P2


def judge_pairs(judge, items, pairs_P2, principle: str, *, desc: str | None = None,
                workers: int = 1):
  """Runs judge over the pairs, `workers` at a time: (records, failures) in pair order. A record
  is {"a", "b" (indices), "winner", "justification"}; a judgement that raises is recorded in
  failures ({"a", "b", "error"}) and skipped, so one bad reply does not lose the rest."""
  check_principle(principle)

  def one(pair):
    i, j = pair
    try:
      judgement = judge(items[i], items[j], principle)
    except Exception as e:  # noqa: BLE001  (any judge failure is recorded, not fatal)
      return {"a": i, "b": j, "error": f"{type(e).__name__}: {e}"}
    return {"a": i, "b": j, "winner": judgement.winner, "justification": judgement.justification}

  pairs = pairs_P2.tolist()
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    done = list(progress(pool.map(one, pairs), desc=desc or f"judging {principle}",
                         total=len(pairs)))
  return [r for r in done if "error" not in r], [r for r in done if "error" in r]


class EncoderJudge:
  """A dual encoder's judge: an image's score on a principle is the cosine similarity of its
  embedding with that of the principle's text (`texts[principle]`, default its title and
  definition); the higher score wins. `encoder` has `image_size`, `encode_images(images_NHWC
  float in [0, 1])` and `encode_texts(texts)` (lloglin.evals.negbench.encoder's dual encoder, or
  any such object). All images are encoded once, in batches, when the judge is built. An encoder
  whose vocabulary lacks the words of a text fails on that principle (recorded per judgement):
  give it texts in its own words."""

  def __init__(self, encoder, items, *, texts: dict | None = None, batch_size: int = 64,
               tol: float = 0.0):
    self.encoder, self.tol = encoder, tol
    self.texts = {name: f"{p.title}: {p.definition}" for name, p in PRINCIPLES.items()}
    self.texts.update(texts or {})
    size = int(encoder.image_size)
    rows = []
    for start in progress(range(0, len(items), batch_size), desc="perception: encoding images"):
      batch = [np.asarray(Image.fromarray(it.image).resize((size, size), Image.BICUBIC),
                          np.float32) / 255.0 for it in items[start:start + batch_size]]
      rows.append(np.asarray(encoder.encode_images(np.stack(batch))))
    self._images = dict(zip((it.id for it in items),
                            normalize(np.concatenate(rows), what="image embeddings")))
    self._text_cache: dict[str, np.ndarray] = {}

  def score(self, item, principle: str) -> float:
    if principle not in self._text_cache:
      text = self.texts[check_principle(principle).name]
      self._text_cache[principle] = normalize(
          np.asarray(self.encoder.encode_texts([text])), what=f"embedding of {text!r}")[0]
    return float(self._images[item.id] @ self._text_cache[principle])

  def __call__(self, a, b, principle: str) -> Judgement:
    sa, sb = self.score(a, principle), self.score(b, principle)
    return Judgement(_compare(sa, sb, self.tol),
                     f"cosine with {self.texts[principle]!r}: A {sa:.4f}, B {sb:.4f}")
