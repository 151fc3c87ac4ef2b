"""The `negbench` suite: does a dual encoder understand negation (NegBench, arXiv 2501.09425)?

Data: the synthetic scenes (lloglin.data.scenes; the test split of `negbench.seed`) by default, or
the released NegBench CSVs (`negbench.mcq_csv`, `retrieval_csv`, `negated_retrieval_csv`, images
under `image_root`; data.py). Encoder: the checkpoint's dual encoder (`negbench.encoder = ""`), or
a user's "module:function" returning an object with `image_size`, `encode_images(images_NHWC)`
and `encode_texts(texts)` (any embeddings; the suite L2-normalises them before scoring).

Results: MCQ-Neg accuracy per question type with the chosen option types; text-to-image
Recall@1/5/10 with the original and the negated captions; the PCA probe of caption embeddings by
template category and the mean cosine of each affirmation to its negation. Figures: mcq.png,
retrieval.png, pca.png. Method and readings of the paper: docs/suites/negbench.md.
"""

import os

import numpy as np

from lloglin.data.negbench import (PROBE_TEMPLATES, QUESTION_TYPES, Annotations, article,
                                   mcq_questions, retrieval_items)
from lloglin.data.scenes import CLASSES, make_scenes
from lloglin.evals.negbench import data, plots
from lloglin.evals.negbench.encoder import make_encoder
from lloglin.evals.negbench.metrics import cosine, mcq_metrics, normalize, recall_at_k
from lloglin.evals.registry import register_suite
from lloglin.evals.report import progress

FIGURES = ("mcq.png", "retrieval.png", "pca.png")


@register_suite("negbench")
def run(config, *, checkpoint: str | None, out_dir: str) -> dict:
  cfg = config.negbench
  _check_settings(cfg)
  encoder = make_encoder(cfg, checkpoint, suite="negbench", use="negbench.encoder=''")
  if cfg.mcq_csv or cfg.retrieval_csv or cfg.negated_retrieval_csv:
    results = _evaluate_csv(cfg, encoder)
  else:
    results = evaluate_scenes(encoder, num_images=cfg.num_images, seed=cfg.seed,
                              questions_per_image=cfg.questions_per_image,
                              batch_size=cfg.batch_size)
  objects = tuple(cfg.probe_objects) or CLASSES
  results["probe"] = probe(encoder, objects, batch_size=cfg.batch_size,
                           path=os.path.join(out_dir, "pca.png"))
  if "mcq" in results:
    plots.mcq(results["mcq"], os.path.join(out_dir, "mcq.png"))
  if "retrieval" in results:
    plots.retrieval(results["retrieval"], os.path.join(out_dir, "retrieval.png"))
  print_summary(results)
  return results


def _check_settings(cfg):
  for key, ok, expected in (("num_images", cfg.num_images >= 2, ">= 2"),
                            ("questions_per_image", 1 <= cfg.questions_per_image <= 3,
                             "in 1..3 (one negated object each)"),
                            ("batch_size", cfg.batch_size >= 1, ">= 1")):
    if not ok:
      raise ValueError(f"negbench.{key}={cfg[key]!r}; expected {expected}")


def embed_texts(encoder, texts: list[str], *, batch_size: int, desc: str) -> np.ndarray:
  """[len(texts), D] L2-normalised; each distinct text is encoded once."""
  unique = list(dict.fromkeys(texts))
  rows = [np.asarray(encoder.encode_texts(unique[i:i + batch_size]))
          for i in progress(range(0, len(unique), batch_size), desc=desc)]
  table = normalize(np.concatenate(rows), what=f"{desc} embeddings")
  where = {t: i for i, t in enumerate(unique)}
  return table[[where[t] for t in texts]]


def embed_images(encoder, images_NHWC: np.ndarray, *, batch_size: int, desc: str) -> np.ndarray:
  rows = [np.asarray(encoder.encode_images(images_NHWC[i:i + batch_size]))
          for i in progress(range(0, len(images_NHWC), batch_size), desc=desc)]
  return normalize(np.concatenate(rows), what=f"{desc} embeddings")


def score_mcq(encoder, image_QD: np.ndarray, options: list[list[str]], *,
              batch_size: int) -> np.ndarray:
  """[Q, C] cosine of each question's image to each of its options (C options per question)."""
  sizes = {len(o) for o in options}
  if len(sizes) != 1:
    raise ValueError(f"options: expected the same number of options for every question, got "
                     f"{sorted(sizes)}")
  flat = embed_texts(encoder, [t for o in options for t in o], batch_size=batch_size,
                     desc="negbench: MCQ options")
  return np.einsum("qcd,qd->qc", flat.reshape(len(options), sizes.pop(), -1), image_QD)


def evaluate_scenes(encoder, *, num_images: int, seed: int, questions_per_image: int,
                    batch_size: int) -> dict:
  """MCQ-Neg and Retrieval-Neg on `num_images` test scenes (relevant images for a caption: those
  holding exactly its image's objects, as scenes repeat object sets)."""
  scenes = make_scenes(num_images, seed=seed, split="test", image_size=encoder.image_size)
  ann = Annotations(scenes.objects, CLASSES)
  image_ND = embed_images(encoder, scenes.images_NHWC, batch_size=batch_size,
                          desc="negbench: images")
  questions = mcq_questions(ann, seed=seed, per_image=questions_per_image)
  scores = score_mcq(encoder, image_ND[[q.image for q in questions]],
                     [q.options for q in questions], batch_size=batch_size)
  mcq = mcq_metrics(scores, [q.answer for q in questions], [q.type for q in questions],
                    [q.option_types for q in questions])
  mcq["num_options"] = 4
  items = retrieval_items(ann, seed=seed + 1)
  keep = [it.image for it in items]
  same_objects = np.array([[set(ann.objects[i]) == set(ann.objects[j]) for j in keep]
                           for i in keep])
  retrieval = {"num_images": len(keep), "num_queries": len(items)}
  for name, texts in (("original", [it.caption for it in items]),
                      ("negated", [it.negated_caption for it in items])):
    text_QD = embed_texts(encoder, texts, batch_size=batch_size, desc=f"negbench: {name} captions")
    retrieval[name] = recall_at_k(cosine(text_QD, image_ND[keep]), same_objects)
  examples = {"mcq": [{"objects": ann.objects[q.image], "options": q.options, "answer": q.answer,
                       "type": q.type} for q in questions[:3]],
              "retrieval": [{"objects": ann.objects[it.image], "caption": it.caption,
                             "negated_caption": it.negated_caption} for it in items[:3]]}
  return {"data": {"scenes": {"num_images": num_images, "seed": seed, "split": "test"}},
          "mcq": mcq, "retrieval": retrieval, "examples": examples}


def _evaluate_csv(cfg, encoder) -> dict:
  size, root = encoder.image_size, cfg.image_root
  results = {"data": {k: cfg[k] for k in ("mcq_csv", "retrieval_csv", "negated_retrieval_csv",
                                          "image_root") if cfg[k]}}
  if cfg.mcq_csv:
    questions = data.load_mcq_csv(cfg.mcq_csv)
    images, index = data.load_csv_images(questions, cfg.mcq_csv, root, size,
                                         convert_rgb=cfg.convert_rgb)
    image_QD = embed_images(encoder, images, batch_size=cfg.batch_size,
                            desc="negbench: MCQ images")[index]
    scores = score_mcq(encoder, image_QD, [q["options"] for q in questions],
                       batch_size=cfg.batch_size)
    # the released layout does not record the distractors' types
    unknown = [["unknown"] * len(q["options"]) for q in questions]
    results["mcq"] = mcq_metrics(scores, [q["answer"] for q in questions],
                                 [q["type"] or "unknown" for q in questions], unknown)
    results["mcq"]["num_options"] = len(questions[0]["options"])
  files = {"original": cfg.retrieval_csv, "negated": cfg.negated_retrieval_csv}
  if any(files.values()):
    retrieval = {}
    for name, path in files.items():
      if not path:
        continue
      items = data.load_retrieval_csv(path)
      images, index = data.load_csv_images(items, path, root, size, convert_rgb=cfg.convert_rgb)
      image_ND = embed_images(encoder, images, batch_size=cfg.batch_size,
                              desc=f"negbench: {name} retrieval images")
      owner = np.repeat(index, [len(it["captions"]) for it in items])
      text_QD = embed_texts(encoder, [c for it in items for c in it["captions"]],
                            batch_size=cfg.batch_size, desc=f"negbench: {name} captions")
      retrieval[name] = recall_at_k(cosine(text_QD, image_ND),
                                    owner[:, None] == np.arange(len(images))[None])
      retrieval["num_images"], retrieval["num_queries"] = len(images), len(owner)
    results["retrieval"] = retrieval
  return results


def probe_texts(objects) -> dict[str, list[str]]:
  """Per category of PROBE_TEMPLATES, its templates filled with each object (and the next one)."""
  objects = list(objects)
  if len(objects) < 2:
    raise ValueError(f"negbench.probe_objects: expected at least two names, got {objects!r}")
  pairs = [(x, objects[(i + 1) % len(objects)]) for i, x in enumerate(objects)]
  return {category: [t.format(a=article(x), b=article(y), x=x, y=y)
                     for x, y in pairs for t in templates]
          for category, templates in PROBE_TEMPLATES.items()}


def probe(encoder, objects, *, batch_size: int, path: str) -> dict:
  """The PCA figure and the mean cosine between each affirmation and the negation of the same
  object in the same phrasing (near 1: the encoder hardly tells them apart)."""
  texts = probe_texts(objects)
  emb = {c: embed_texts(encoder, t, batch_size=batch_size, desc=f"negbench: probe {c}")
         for c, t in texts.items()}
  plots.pca(emb, path)
  paired = (emb["affirmation"] * emb["negation"]).sum(1)
  within = emb["affirmation"] @ emb["affirmation"].T
  return {"categories": list(texts), "texts_per_category": len(texts["affirmation"]),
          "affirmation_negation_cosine": float(paired.mean()),
          "affirmation_affirmation_cosine": float(within[np.triu_indices(len(within), 1)].mean())}


def print_summary(results: dict):
  if "mcq" in results:
    m = results["mcq"]
    per = "  ".join(f"{t} {m['per_type'][t]:.3f}" for t in QUESTION_TYPES)
    print(f"negbench MCQ ({m['num_questions']} questions): accuracy {m['accuracy']:.3f}  {per}")
  if "retrieval" in results:
    r = results["retrieval"]
    for name in ("original", "negated"):
      if name in r:
        print(f"negbench retrieval {name}: "
              + "  ".join(f"{k} {v:.3f}" for k, v in r[name].items()))
  p = results["probe"]
  print(f"negbench probe: cos(affirmation, negation) {p['affirmation_negation_cosine']:.3f}, "
        f"between affirmations {p['affirmation_affirmation_cosine']:.3f}")
