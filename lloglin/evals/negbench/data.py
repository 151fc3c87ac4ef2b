"""Loaders for the released NegBench CSV layout (docs/suites/negbench.md#csv-layout).

MCQ files (COCO_val_mcq_llama3.1_rephrased.csv, VOC2007_...): `image_path`, the options
`caption_0` .. `caption_{C-1}`, `correct_answer` (the correct option's index) and, optionally,
`correct_answer_template` (affirmation / negative / hybrid: the question's type). Retrieval files
(COCO_val_retrieval.csv, COCO_val_negated_retrieval_...csv): `filepath` (or `image_path`) and
`captions`, a Python list literal of that image's captions. Image paths are relative to
`image_root` unless absolute. Images (any format PIL reads, or .npy arrays) must be H x W x 3; they
are centre-cropped to a square and resized to the encoder's size, as CLIP's preprocessing does.
Every bad row raises an error naming the file and the row.
"""

import ast
import csv
import os

import numpy as np

TEMPLATE_TYPES = {"affirmation": "affirmation", "negative": "negation", "negation": "negation",
                  "hybrid": "hybrid"}


def read_rows(path: str, required: tuple[str, ...], *, what: str) -> tuple[list[str], list[dict]]:
  """(header, rows) of a CSV file that must hold the `required` columns."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}: no such file {path!r}")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    header = list(reader.fieldnames or [])
    missing = [c for c in required if c not in header]
    if missing:
      raise ValueError(f"{path} row 0 (the header): missing column(s) {missing}; found {header}")
    return header, list(reader)


def _where(path: str, r: int) -> str:
  return f"{path} row {r + 1} (line {r + 2})"


def _cell(row: dict, column: str, path: str, r: int) -> str:
  value = (row.get(column) or "").strip()
  if not value:
    raise ValueError(f"{_where(path, r)}: column {column!r} is empty")
  return value


def load_mcq_csv(path: str) -> list[dict]:
  """[{"image_path", "options", "answer", "type"}] of an MCQ CSV; options keep their column order
  (empty option cells are dropped; `answer` is re-indexed accordingly). `type` is None when the
  file has no correct_answer_template column."""
  header, rows = read_rows(path, ("image_path", "caption_0", "correct_answer"), what="mcq_csv")
  option_columns = sorted((c for c in header if c.startswith("caption_")
                           and c[len("caption_"):].isdigit()), key=lambda c: int(c[8:]))
  questions = []
  for r, row in enumerate(rows):
    image = _cell(row, "image_path", path, r)
    filled = [c for c in option_columns if (row.get(c) or "").strip()]
    if not filled:
      raise ValueError(f"{_where(path, r)}: the option set is empty (columns {option_columns})")
    answer_text = _cell(row, "correct_answer", path, r)
    try:
      answer_column = f"caption_{int(float(answer_text))}"
    except ValueError:
      answer_column = None
    if answer_column not in filled:
      raise ValueError(f"{_where(path, r)}: correct_answer={answer_text!r} names no non-empty "
                       f"option; expected the index of one of {filled}")
    qtype = None
    if "correct_answer_template" in header:
      name = _cell(row, "correct_answer_template", path, r).lower()
      if name not in TEMPLATE_TYPES:
        raise ValueError(f"{_where(path, r)}: correct_answer_template={name!r}; expected one of "
                         f"{sorted(TEMPLATE_TYPES)}")
      qtype = TEMPLATE_TYPES[name]
    questions.append({"image_path": image, "options": [row[c].strip() for c in filled],
                      "answer": filled.index(answer_column), "type": qtype})
  if not questions:
    raise ValueError(f"{path}: the MCQ file has no rows")
  return questions


def load_retrieval_csv(path: str) -> list[dict]:
  """[{"image_path", "captions"}] of a retrieval CSV (one row per image)."""
  header, rows = read_rows(path, ("captions",), what="retrieval csv")
  image_column = next((c for c in ("filepath", "image_path") if c in header), None)
  if image_column is None:
    raise ValueError(f"{path} row 0 (the header): missing column 'filepath' (or 'image_path'); "
                     f"found {header}")
  items = []
  for r, row in enumerate(rows):
    text = _cell(row, "captions", path, r)
    try:
      captions = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      captions = None
    if (not isinstance(captions, (list, tuple)) or not captions
        or not all(isinstance(c, str) and c.strip() for c in captions)):
      raise ValueError(f"{_where(path, r)}: captions={text[:80]!r}; expected a non-empty list "
                       f"of non-empty strings, e.g. ['a dog on a sofa']")
    items.append({"image_path": _cell(row, image_column, path, r), "captions": list(captions)})
  if not items:
    raise ValueError(f"{path}: the retrieval file has no rows")
  return items


def load_image(path: str, size: int, *, where: str, convert_rgb: bool = False) -> np.ndarray:
  """The image at `path` as float32 [size, size, 3] in [0, 1] (centre crop, bicubic resize).
  convert_rgb: greyscale and RGBA images are converted instead of refused."""
  from PIL import Image

  if not os.path.isfile(path):
    raise FileNotFoundError(f"{where}: no such image file {path!r}")
  if path.endswith(".npy"):
    x = np.load(path)
    if x.dtype != np.uint8:
      if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all() or x.min() < 0 \
          or x.max() > 1:
        raise ValueError(f"{where}: image {path!r} must be uint8 or float in [0, 1], got "
                         f"{x.dtype}")
      x = np.round(x * 255).astype(np.uint8)
    if convert_rgb and x.ndim == 2:
      x = np.repeat(x[..., None], 3, axis=-1)
  else:
    with Image.open(path) as img:
      x = np.asarray(img.convert("RGB") if convert_rgb else img)
  if x.ndim != 3 or x.shape[-1] != 3:
    raise ValueError(f"{where}: image {path!r} has shape {x.shape}; expected [height, width, 3] "
                     f"(RGB; set negbench.convert_rgb=True to convert greyscale / RGBA)")
  h, w = x.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  img = Image.fromarray(np.ascontiguousarray(x[top:top + side, left:left + side]))
  if side != size:
    img = img.resize((size, size), Image.BICUBIC)
  return np.asarray(img, np.float32) / 255.0


def load_csv_images(items: list[dict], csv_path: str, image_root: str, size: int, *,
                    convert_rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(images [M, size, size, 3] float32 of the distinct image paths of `items` (rows of
  `csv_path`), image index [len(items)] of each row); errors name the first row using the file."""
  index, images = {}, []
  for r, item in enumerate(items):
    p = item["image_path"]
    if p not in index:
      index[p] = len(images)
      images.append(load_image(p if os.path.isabs(p) else os.path.join(image_root, p), size,
                               where=_where(csv_path, r), convert_rgb=convert_rgb))
  return np.stack(images), np.array([index[item["image_path"]] for item in items])
