"""Image folders with a scores CSV: a user's SAVOIAS or IC9600 copy (docs/suites/perception.md
#data-layout) becomes a list of synthetic.Item's with human scores and categories.

The scores file names each image (a path relative to the image folder, or absolute), its human
score and optionally its category: a CSV whose column names are settings (`image_column`,
`score_column`, `category_column`), so a data set's ground-truth table exported as CSV (SAVOIAS
ships spreadsheets) is read as it is; or IC9600's own train.txt / test.txt (layout "ic9600").
Images keep their aspect ratio: the longer side is resized to `max_side` (so measures compare
like with like); greyscale, palette and RGBA images are converted to RGB. Every problem raises
an error naming the file: a missing or unreadable image, an image smaller than `min_side`, a
score that is not a number, and an image of the folder the CSV does not score.
"""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from lloglin.evals.negbench.data import read_rows
from lloglin.evals.perception.synthetic import Item

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_image(path: str, *, max_side: int, min_side: int) -> np.ndarray:
  """[H, W, 3] uint8 RGB, the longer side resized to max_side (0: kept)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image: no such file {path!r}")
  try:
    with Image.open(path) as img:
      img = img.convert("RGB")
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"image {path!r}: unreadable ({type(e).__name__}: {e})") from e
  if min(img.size) < min_side:
    raise ValueError(f"image {path!r}: {img.size[0]}x{img.size[1]} px is too small; expected "
                     f"both sides >= {min_side} (perception.min_side)")
  if max_side and max(img.size) != max_side:
    scale = max_side / max(img.size)
    img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                     Image.BICUBIC)
  return np.asarray(img, dtype=np.uint8)


def read_scores(scores_file: str, *, layout: str = "csv", image_column: str = "image",
                score_column: str = "score", category_column: str = "") -> list[tuple]:
  """[(where, image name, score text, category or None)] of a scores file.

  layout "csv": a CSV with a header holding the named columns. layout "ic9600": IC9600's
  train.txt / test.txt, one `image_name score` per line, whitespace-separated, no header; the
  category, with category_column="name_prefix", is the name up to its first "_"."""
  if layout == "csv":
    required = (image_column, score_column) + ((category_column,) if category_column else ())
    _, rows = read_rows(scores_file, required, what="scores_csv")
    return [(f"{scores_file} row {r + 1}", (row[image_column] or "").strip(), row[score_column],
             (row[category_column] or "").strip() if category_column else None)
            for r, row in enumerate(rows)]
  if layout != "ic9600":
    raise ValueError(f"layout: expected 'csv' or 'ic9600', got {layout!r}")
  if category_column not in ("", "name_prefix"):
    raise ValueError(f"category_column={category_column!r}: the ic9600 layout has no columns; "
                     f"expected '' or 'name_prefix'")
  if not os.path.isfile(scores_file):
    raise FileNotFoundError(f"scores_csv: no such file {scores_file!r}")
  out = []
  with open(scores_file, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.split()
      if len(fields) != 2:
        raise ValueError(f"{scores_file} line {n}: expected 'image_name score', got {line!r}")
      category = fields[0].split("_")[0] if category_column else None
      out.append((f"{scores_file} line {n}", fields[0], fields[1], category))
  return out


def load_folder(image_dir: str, scores_csv: str, *, layout: str = "csv",
                image_column: str = "image", score_column: str = "score",
                category_column: str = "", max_side: int = 256, min_side: int = 32) -> list[Item]:
  """Items of the images the scores file lists (in its order), with human score and category."""
  if not os.path.isdir(image_dir):
    raise FileNotFoundError(f"image_dir: no such folder {image_dir!r}")
  rows = read_scores(scores_csv, layout=layout, image_column=image_column,
                     score_column=score_column, category_column=category_column)
  if not rows:
    raise ValueError(f"{scores_csv}: no rows")
  items, listed = [], set()
  for where, name, score_text, category in rows:
    path = os.path.normpath(os.path.join(image_dir, name))
    if not name or not os.path.isfile(path):
      raise FileNotFoundError(f"{where}: no image file {path!r} for image {name!r}")
    try:
      score = float(score_text)
    except (TypeError, ValueError):
      score = float("nan")
    if not np.isfinite(score):
      raise ValueError(f"{where} ({name}): score {score_text!r} is not a number")
    listed.add(path)
    items.append(Item(name, load_image(path, max_side=max_side, min_side=min_side), {},
                      human=score, category=category))
  unscored = sorted(os.path.relpath(p, image_dir) for p in _images_under(image_dir)
                    if p not in listed)
  if unscored:
    raise ValueError(f"{scores_csv}: {len(unscored)} image(s) of {image_dir!r} have no score, "
                     f"e.g. {unscored[:5]}; add them to the scores file or move them out of the "
                     f"folder")
  return items


def _images_under(folder: str):
  for root, _, files in os.walk(folder):
    for f in files:
      if f.lower().endswith(IMAGE_EXTENSIONS):
        yield os.path.normpath(os.path.join(root, f))
